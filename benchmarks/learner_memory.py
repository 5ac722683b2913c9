"""Peak memory and time of one learner forward+backward through ``grouped_logprobs``: LM head in chunks vs whole.

    python benchmarks/learner_memory.py                     # CPU: Qwen2.5's 151,936 vocab, hidden 128, 2 layers
    python benchmarks/learner_memory.py --device cuda --hidden 896 --layers 24 --seqs 128  # Qwen2.5-0.5B shape

Each row runs in its own subprocess, so each peak is its own: the resident-set high-water mark
(ru_maxrss, model and inputs included) on CPU, torch.cuda.max_memory_allocated on CUDA. "learner GB"
is the peak less the memory held just before the forward. Rows: ``before`` is the head as it was
(all N completion tokens' logits at once, autograd through an fp32 log-softmax, entropy under
no_grad); a number is ``chunk_tokens`` for ``rlvr.model.head_logprobs`` (0: all at once, through the
same hand-written backward). The model is Qwen2-shaped with random weights and tied embeddings;
every row sees the same weights, prompts, completions and advantages, and the last two columns are
the largest differences from the first row's loss and gradients (all parameters).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def old_head(model, hidden, targets, temperature=1.0, with_entropy=False, chunk_tokens=None):
    """The head before chunking, for the ``before`` row."""
    import torch

    from rlvr import algos

    logits = model.get_output_embeddings()(hidden)  # (N, V)
    logp = algos.token_logprobs(logits, targets, temperature)
    if not with_entropy:
        return logp, None
    with torch.no_grad():
        return logp, algos.entropy(logits, temperature)


def memory_gb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def worker(a) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlvr import model as model_lib

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_key_value_heads=2,
        num_attention_heads=max(a.hidden // 64, 2),
        intermediate_size=4 * a.hidden,
        tie_word_embeddings=True,
        max_position_embeddings=a.prompt + a.completion + 1,
    )
    model = Qwen2ForCausalLM(cfg).to(a.device, getattr(torch, a.dtype))
    G = a.group
    uniq = [torch.randint(0, a.vocab, (a.prompt,)).tolist() for _ in range(a.seqs // G)]
    prompts = [p for p in uniq for _ in range(G)]  # groups of G completions share a prompt
    completions = [torch.randint(0, a.vocab, (a.completion,)).tolist() for _ in range(a.seqs)]
    adv = torch.randn(a.seqs, 1, device=a.device)
    if a.row == "before":
        model_lib.head_logprobs = old_head
    chunk = None if a.row == "before" else int(a.row)
    if a.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated() / 2**30
    else:
        start = memory_gb(a.device)
    times = []
    for _ in range(a.repeats):
        model.zero_grad(set_to_none=True)
        t = time.perf_counter()
        logp, mask, ent = model_lib.grouped_logprobs(model, prompts, completions, G, 0, 1.0, True, chunk)
        loss = -(logp * adv * mask).sum() / mask.sum()  # GRPO's first-pass surrogate (ratio 1)
        loss.backward()
        if a.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = memory_gb(a.device)
    grads = torch.cat([p.grad.float().flatten().cpu() for p in model.parameters()])
    torch.save({"loss": loss.item(), "entropy": (ent * mask).sum().item() / mask.sum().item(), "grads": grads}, a.out)
    print(json.dumps({"peak_gb": peak, "learner_gb": peak - start, "s": min(times), "tokens": int(mask.sum())}))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="model dtype (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seqs", type=int, default=8)
    p.add_argument("--group", type=int, default=8, help="completions per prompt (grouped_logprobs' group_size)")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    p.add_argument("--completion", type=int, default=512, help="completion tokens per sequence")
    p.add_argument("--rows", default="before,0,4096,1024,256", help="comma-separated: before, or a chunk_tokens value")
    p.add_argument("--repeats", type=int, default=1, help="forward+backward passes per row; the fastest is shown")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.seqs % a.group:
        p.error(f"--seqs {a.seqs} is not a multiple of --group {a.group}")
    a.dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    if a.row is not None:
        return worker(a)

    import torch

    print(
        f"device {a.device}, {a.dtype}, vocab {a.vocab}, hidden {a.hidden}, {a.layers} layers, {a.seqs} sequences "
        f"({a.seqs // a.group} prompts x {a.group}) x {a.completion} completion tokens, prompts {a.prompt} tokens\n"
    )
    print("| head | peak GB | learner GB | s | max abs diff loss | max abs diff grad |")
    print("|---|---|---|---|---|---|")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for row in a.rows.split(","):
            out = Path(tmp) / f"{row}.pt"
            args = [f"--{k}={v}" for k, v in vars(a).items() if k not in ("row", "out", "rows") and v is not None]
            proc = subprocess.run(
                [sys.executable, __file__, *args, f"--row={row}", f"--out={out}"], capture_output=True, text=True
            )
            if proc.returncode:
                print(f"| {row} | failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]} |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            res = torch.load(out)
            base = base or res
            name = {"before": "before (all at once)", "0": "chunk 0 (all at once)"}.get(row, f"chunk {row}")
            print(
                f"| {name} | {r['peak_gb']:.2f} | {r['learner_gb']:.2f} | {r['s']:.1f} | "
                f"{abs(res['loss'] - base['loss']):.1e} | {(res['grads'] - base['grads']).abs().max().item():.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
