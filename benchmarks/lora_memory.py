"""Learner peak memory and step time, LoRA against full training, on a Qwen2.5-0.5B-shaped random model.

    python benchmarks/lora_memory.py                       # CPU, float32: 24 layers, hidden 896, vocab 151,936
    python benchmarks/lora_memory.py --device cuda --seqs 32 --completion 1024   # a GPU, bfloat16

Each row runs in its own subprocess, so each peak is its own: the resident-set high-water mark (ru_maxrss) on CPU,
torch.cuda.max_memory_allocated on CUDA. A row builds the model (random weights, tied embeddings), wraps it as
``model.lora`` does (``rlvr.model.with_lora``: peft, every linear of the decoder unless ``--targets``), and takes
``--steps`` optimizer steps of ``rlvr.learner.Learner`` (AdamW, gradient clipping) on GRPO's first-pass surrogate
over random prompts and completions; "s/step" is the fastest step after the first (which allocates AdamW's state).
"trained" counts the parameters with gradients, "optimizer GB" AdamW's moments; "learner GB" is the peak less the
memory held once the model was built.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from learner_memory import memory_gb  # noqa: E402  (beside this file)


def worker(a) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlvr import model as model_lib
    from rlvr.config import DeepSpeedConfig, LoraConfig
    from rlvr.learner import Learner

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        num_hidden_layers=a.layers,
        num_attention_heads=a.hidden // 64,
        num_key_value_heads=2,
        intermediate_size=a.intermediate,
        tie_word_embeddings=True,
        max_position_embeddings=a.prompt + a.completion + 1,
    )
    model = Qwen2ForCausalLM(cfg).to(a.device, getattr(torch, a.dtype))
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    r = int(a.row)
    if r:
        targets = a.targets.split(",") if a.targets else []
        model = model_lib.with_lora(model, LoraConfig(r=r, alpha=2 * r, target_modules=targets))
    learner = Learner(model, DeepSpeedConfig(), lr=1e-5)
    if a.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = memory_gb(a.device)
    prompts = [torch.randint(0, a.vocab, (a.prompt,)).tolist() for _ in range(a.seqs)]
    completions = [torch.randint(0, a.vocab, (a.completion,)).tolist() for _ in range(a.seqs)]
    ids, attn, mask = (t.to(a.device) for t in model_lib.pad_batch(prompts, completions, pad_id=0))
    adv = torch.randn(a.seqs, 1, device=a.device)
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        for s in range(0, a.seqs, a.micro):  # micro-batches, as the RL stage accumulates them
            logp, m = learner.forward(
                model_lib.completion_logprobs, ids[s : s + a.micro], attn[s : s + a.micro], mask[s : s + a.micro]
            )
            learner.backward(-(logp * adv[s : s + a.micro] * m).sum() / mask.sum())
        learner.step()
        if a.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = sum(t.numel() * t.element_size() for st in learner.optimizer.state.values() for t in st.values())
    peak = memory_gb(a.device)
    print(
        json.dumps(
            {
                "params": sum(p.numel() for p in model.parameters()),
                "trained": trained,
                "optimizer_gb": opt / 2**30,
                "peak_gb": peak,
                "learner_gb": peak - start,
                "s": min(times[1:] or times),
            }
        )
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, help="model dtype (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--intermediate", type=int, default=4864)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--seqs", type=int, default=4, help="sequences per optimizer step")
    p.add_argument("--micro", type=int, default=2, help="sequences per micro-batch")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    p.add_argument("--completion", type=int, default=192, help="completion tokens per sequence")
    p.add_argument("--rows", default="0,8,64", help="comma-separated LoRA ranks; 0: full training")
    p.add_argument("--targets", default="", help="LoRA target modules, comma-separated ('': every linear)")
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per row; the fastest after the first shown")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--row", help=argparse.SUPPRESS)
    a = p.parse_args()
    a.dtype = a.dtype or ("bfloat16" if a.device == "cuda" else "float32")
    if a.row is not None:
        return worker(a)
    print(
        f"device {a.device}, {a.dtype}, {a.layers} layers, hidden {a.hidden}, vocab {a.vocab}; {a.seqs} sequences "
        f"x ({a.prompt} prompt + {a.completion} completion tokens) per step, micro-batches of {a.micro}"
        f"{', gradient checkpointing' if a.gradient_checkpointing else ''}\n"
    )
    print("| training | params | trained | optimizer GB | peak GB | learner GB | s/step |")
    print("|---|---|---|---|---|---|---|")
    for row in a.rows.split(","):
        args = [f"--{k}={v}" for k, v in vars(a).items() if k not in ("row", "rows") and v not in (None, False)]
        args = [x.removesuffix("=True") for x in args]
        proc = subprocess.run([sys.executable, __file__, *args, f"--row={row}"], capture_output=True, text=True)
        if proc.returncode:
            print(f"| {row} | failed ({proc.returncode}): {(proc.stderr.strip().splitlines() or [''])[-1]} |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        name = "full" if row == "0" else f"LoRA r={row}"
        print(
            f"| {name} | {r['params'] / 1e6:.1f}M | {r['trained'] / 1e6:.2f}M | {r['optimizer_gb']:.2f} | "
            f"{r['peak_gb']:.2f} | {r['learner_gb']:.2f} | {r['s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
