"""Whole GRPO steps, ours against TRL's GRPOTrainer, on one workload, one machine, one invocation.

    python benchmarks/grpo_throughput.py                     # CPU: the tiny model, 16 prompts x 8
    python benchmarks/grpo_throughput.py --workload qwen05b  # GPU: Qwen2.5-0.5B-shaped, random weights, bf16
    python benchmarks/grpo_throughput.py --compile           # ours with sampler.compile (static cache, compiled step)

Each side runs in its own subprocess (so peak memory is its own) for ``--steps`` GRPO steps with the
same prompts, group size, generation budget, temperature 1.0, beta 0 and a trivial reward (this
measures the engines, not the verifiers); the first step is warm-up and not counted. The table shows
sampling tokens/s (completion tokens over generation time), learner tokens/s (prompt + completion
tokens over the rest of the step), whole-step seconds, peak memory, and our/TRL ratios, then the
physical floor of the step (every weight read once per decode step, 6 x params x tokens for the
learner, at this device's copy and matmul rates, measured first unless ``--peak_tbps`` and
``--peak_tflops`` are given) and how far each side is from it. Needs
``pip install trl``. The qwen05b workload is built from its config with random weights (hub weights
cannot be downloaded here); prompts are exactly 128 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing


def length_reward(prompts, completions, **columns):
    """The shared trivial reward: longer completions score a little higher (so advantages are not 0)."""
    return [len(c) / 1000.0 for c in completions]


def build_workload(kind: str, out: Path) -> dict:
    """Write the model, tokenizer and prompts both sides load; returns the workload description."""
    import json as _json

    if kind == "tiny":
        from rlvr.templates import R1_ZERO

        rows = [_json.loads(line) for line in open(REPO / "rlvr" / "tiny" / "data" / "test.jsonl")]
        prompts = [R1_ZERO.format(question=r["question"]) for r in rows]
        return {
            "model": str(REPO / "rlvr" / "tiny" / "model"),
            "prompts": prompts,
            "max_new_tokens": 48,
            "dtype": "float32",
        }
    import random

    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    # The tiny model's byte-level tokenizer stands in for Qwen's (which cannot be downloaded here): the
    # model keeps Qwen's 151,936-row embedding, prompts are 128 tokens of digits, and completions are
    # decoded as far as that tokenizer can (the reward only needs some text).
    tok = AutoTokenizer.from_pretrained(REPO / "rlvr" / "tiny" / "model")
    cfg = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    rng = random.Random(0)
    prompts = []
    while len(prompts) < 64:
        text = " " + " ".join(str(rng.randrange(10)) for _ in range(64))
        if len(tok(text)["input_ids"]) == 128:
            prompts.append(text)
    return {"model": str(out / "model"), "prompts": prompts, "max_new_tokens": 512, "dtype": "bfloat16"}


def peak_memory_gb(device: str) -> float:
    import resource

    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def ours_overrides(w: dict, a) -> dict:
    """Our config for the workload: its model and budget, the group and batch sizes, the trivial reward."""
    return {
        "model.path": w["model"],
        "model.dtype": w["dtype"],
        "sampler.max_new_tokens": w["max_new_tokens"],
        "sampler.temperature": 1.0,
        "rl.prompts_per_step": a.prompts,
        "rl.samples_per_prompt": a.samples,
        "rl.micro_batch_seqs": a.micro_batch_seqs,
        "rl.lr": 1e-6,
        "rewards": f"[{{verifier: '{Path(__file__).resolve()}:length_reward'}}]",
        "sampler.compile": a.compile,
        # Chunks of this step's rows: for the dynamic path the same single chunk as 256 gives, and no padding
        # rows for the static one (it pads every chunk to batch_seqs rows).
        "sampler.batch_seqs": min(256, a.prompts * a.samples),
    }


def run_ours(w: dict, a) -> dict:
    from rlvr import data as data_lib, model as model_lib
    from rlvr.config import load_config
    from rlvr.learner import Learner
    from rlvr.rl import learn, sample_and_score
    from rlvr.sampler import make_sampler

    cfg = load_config(None, {**ours_overrides(w, a), **dict(kv.split("=", 1) for kv in a.set)})
    model, tok = model_lib.load(cfg.model, a.device)
    problems = [data_lib.Problem(p, "0") for p in w["prompts"]]
    train_set = data_lib.PromptSet(problems, [tok(p)["input_ids"] for p in w["prompts"]], w["prompts"])
    sampler = make_sampler(cfg.sampler, cfg.model, model, tok, cfg.seed)
    learner = Learner(model, cfg.deepspeed, lr=cfg.rl.lr)
    stream = data_lib.PromptStream(len(problems), 0)
    steps = []
    for step in range(1, a.steps + 1):
        sync(a.device)
        t0 = time.time()
        batch, m = sample_and_score(cfg, sampler, stream, train_set, step)
        sync(a.device)
        t1 = time.time()
        learn(learner, None, batch, cfg, sampler.pad_id, step)
        sampler.update_weights(model.state_dict().items())
        sync(a.device)
        t2 = time.time()
        steps.append(
            {
                "gen_s": m["perf/sample_s"],
                "step_s": t2 - t0,
                "learn_s": t2 - t1,
                "completion_tokens": sum(map(len, batch.rollout.completion_ids)),
                "total_tokens": sum(map(len, batch.rollout.completion_ids)) + sum(map(len, batch.rollout.prompt_ids)),
            }
        )
    res = {"steps": steps, "peak_gb": peak_memory_gb(a.device), "params": sum(p.numel() for p in model.parameters())}
    if a.compile:  # did the compiled step really run as one graph (a CUDA graph on a GPU) per shape?
        from torch._dynamo.utils import counters

        res["compiled"] = {
            "graphs": counters["stats"]["unique_graphs"],
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"],
        }
    return res


def run_ours_async(w: dict, a) -> dict:
    """Ours with ``async_rl``: the sampler in a process of its own, one step ahead (on a CPU with 2+ cores, on
    the last core; on a GPU host, on the last GPU), a whole ``python -m rlvr.train``-style run. Its steps'
    sampling, learning and step times come from the run's metrics; peak memory is the learner process's."""
    from rlvr.config import load_config
    from rlvr.rl import train

    tmp = Path(tempfile.mkdtemp())
    rows = "".join(json.dumps({"question": p, "answer": "0"}) + "\n" for p in w["prompts"])
    (tmp / "prompts.jsonl").write_text(rows)
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    cfg = load_config(
        None,
        {
            **ours_overrides(w, a),
            "data.train": str(tmp / "prompts.jsonl"),
            "data.test": str(tmp / "prompts.jsonl"),
            "data.template": "plain",  # the workload's prompts are rendered already
            "eval.problems": 1,
            "rl.steps": a.steps,
            "output_dir": str(tmp / "run"),
            "log.tensorboard": False,
            "cpu_threads": a.threads,
            "async_rl.enabled": True,
            "async_rl.max_off_policy_steps": 1,
            **({"async_rl.sampler_cores": f"[{max(cores)}]"} if a.device == "cpu" and len(cores) > 1 else {}),
            **dict(kv.split("=", 1) for kv in a.set),
        },
    )
    train(cfg)
    steps = []
    for r in (tmp / "run" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(r)
        n = cfg.rl.prompts_per_step * cfg.rl.samples_per_prompt
        completion = m["response/len"] * n
        steps.append(
            {
                "gen_s": m["perf/sample_s"],
                "step_s": m["perf/step_s"],
                "learn_s": m["perf/learn_s"],
                "completion_tokens": completion,
                "total_tokens": m["perf/learn_tokens_per_s"] * m["perf/learn_s"],  # prompts + completions
            }
        )
    from rlvr import model as model_lib

    params = sum(p.numel() for p in model_lib.load(cfg.model, "cpu")[0].parameters())
    return {"steps": steps, "peak_gb": peak_memory_gb(a.device), "params": params}


def run_trl(w: dict, a) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    gen_time = [0.0]
    original = transformers.GenerationMixin.generate

    def timed_generate(self, *args, **kw):
        sync(a.device)
        t = time.time()
        out = original(self, *args, **kw)
        sync(a.device)
        gen_time[0] += time.time() - t
        return out

    transformers.GenerationMixin.generate = timed_generate
    marks, tokens = [], []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sync(a.device)
            marks.append((time.time(), gen_time[0]))

        def on_step_end(self, args, state, control, **kw):
            sync(a.device)
            t0, g0 = marks[-1]
            marks[-1] = (t0, g0, time.time(), gen_time[0])

    def reward(prompts, completions, completion_ids=None, **kw):
        tokens.append(sum(len(c) for c in completion_ids))
        return length_reward(prompts, completions)

    tok = AutoTokenizer.from_pretrained(w["model"])
    dtype = getattr(torch, w["dtype"])
    model = AutoModelForCausalLM.from_pretrained(w["model"], dtype=dtype)
    n = a.prompts * a.samples
    args = GRPOConfig(
        # The same micro-batching as ours: one generation of n completions per optimizer step.
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=a.micro_batch_seqs,
        gradient_accumulation_steps=n // a.micro_batch_seqs,
        num_generations=a.samples,
        max_completion_length=w["max_new_tokens"],
        temperature=1.0,
        beta=0.0,
        learning_rate=1e-6,
        max_steps=a.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_vllm=False,
        bf16=w["dtype"] == "bfloat16",
        use_cpu=a.device == "cpu",
        dataloader_num_workers=0,
        seed=0,
        shuffle_dataset=False,
        disable_dropout=True,
    )
    ds = Dataset.from_dict({"prompt": w["prompts"]})
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok, callbacks=[Timer()]
    )
    trainer.train()
    prompt_tokens = len(tok(w["prompts"][0])["input_ids"]) * n  # the workloads' prompts are near-uniform
    steps = [
        {
            "gen_s": g1 - g0,
            "step_s": t1 - t0,
            "learn_s": (t1 - t0) - (g1 - g0),
            "completion_tokens": ct,
            "total_tokens": ct + prompt_tokens,
        }
        for (t0, g0, t1, g1), ct in zip(marks, tokens)
    ]
    return {"steps": steps, "peak_gb": peak_memory_gb(a.device), "params": sum(p.numel() for p in model.parameters())}


SIDES = ("ours", "async", "trl")


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def summarise(res: dict, peak_tflops: float) -> dict:
    s = res["steps"][1:] or res["steps"]  # the first step warms up allocators and kernels
    tot = lambda k: sum(x[k] for x in s)  # noqa: E731
    return {
        "sample tok/s": tot("completion_tokens") / tot("gen_s"),
        "learner tok/s": tot("total_tokens") / tot("learn_s"),
        "step s": tot("step_s") / len(s),
        "completion tok/s": tot("completion_tokens") / tot("step_s"),
        "gen share": tot("gen_s") / tot("step_s"),
        "peak GB": res["peak_gb"],
        # model FLOPs utilisation of the learner: 6 x params x tokens per second (forward + backward)
        "learner MFU %": 100 * 6 * res["params"] * tot("total_tokens") / tot("learn_s") / (peak_tflops * 1e12),
    }


def measure_peaks(device: str, threads: int) -> tuple[float, float]:
    """This device's matmul TFLOP/s and copy TB/s (best of 5; bytes read + written): the peaks for MFU
    and the floor, since what a chip sustains differs from its datasheet (clocks, vector units, power).
    CPU: fp32 1024^3 at ``threads`` threads; CUDA: bf16 8192^3, the dtype the GPU workload trains in."""
    import torch

    torch.set_num_threads(threads)
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    x = torch.randn((512 if device == "cuda" else 64) * 2**20, device=device)  # 2 GB / 256 MB, past any cache
    y = torch.empty_like(x)

    def best(fn):
        fn()
        times = []
        for _ in range(5):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
        return min(times)

    return 2 * n**3 / best(lambda: a @ b) / 1e12, 2 * x.numel() * 4 / best(lambda: y.copy_(x)) / 1e12


def physical_floor(res: dict, w: dict, a) -> float:
    """Seconds no engine can beat on this device: each decode step reads every weight once (bandwidth),
    and the learner's forward + backward costs 6 x params x tokens (compute); ours' mean step tokens."""
    s = res["steps"][1:] or res["steps"]
    tokens = sum(x["total_tokens"] for x in s) / len(s)
    weight_bytes = res["params"] * (2 if w["dtype"] == "bfloat16" else 4)
    return w["max_new_tokens"] * weight_bytes / (a.peak_tbps * 1e12) + 6 * res["params"] * tokens / (
        a.peak_tflops * 1e12
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=["tiny", "qwen05b"], default="tiny")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda for qwen05b)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--micro_batch_seqs", type=int, default=0, help="ours; default 64 on tiny, 16 on qwen05b")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for both sides")
    p.add_argument("--compile", action="store_true", help="ours: sampler.compile (the first, uncounted step compiles)")
    p.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="the device's peak for MFU and the floor (default: measured; H100 datasheet: 989 dense bf16)",
    )
    p.add_argument(
        "--peak_tbps",
        type=float,
        default=None,
        help="the device's memory bandwidth for the floor (default: measured; H100 SXM datasheet: 3.35)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ours: a config override, e.g. --set rl.share_prompt=false (repeatable)",
    )
    p.add_argument(
        "--sides",
        default="ours,async,trl",
        help="which of ours, async (ours with async_rl, the sampler one step ahead in its own process) and trl to "
        "run, comma-separated; e.g. ours alone to try a change without re-timing TRL",
    )
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--workload_json", help=argparse.SUPPRESS)
    a = p.parse_args()
    if not set(a.sides.split(",")) <= set(SIDES):
        p.error(f"--sides takes some of {', '.join(SIDES)}, comma-separated; got {a.sides}")
    if any("=" not in kv for kv in a.set):
        p.error(f"--set takes KEY=VALUE, e.g. --set rl.share_prompt=false; got {a.set}")
    a.device = a.device or ("cuda" if a.workload == "qwen05b" else "cpu")
    a.micro_batch_seqs = a.micro_batch_seqs or (64 if a.workload == "tiny" else 16)
    if not a.side and not (a.peak_tflops and a.peak_tbps):
        flops, tbps = measure_peaks(a.device, a.threads)
        a.peak_tflops, a.peak_tbps = a.peak_tflops or flops, a.peak_tbps or tbps
        what = "bf16 8192^3 matmul" if a.device == "cuda" else f"fp32 matmul, {a.threads} thread(s)"
        print(f"this {a.device} measured: {flops:.3g} TFLOP/s ({what}), {tbps:.3g} TB/s (copy)")
    if a.side:  # child process: one side, result as JSON on the last line
        import torch

        torch.set_num_threads(a.threads)
        w = json.loads(Path(a.workload_json).read_text())
        res = {"ours": run_ours, "async": run_ours_async, "trl": run_trl}[a.side](w, a)
        print("RESULT " + json.dumps(res))
        return
    with tempfile.TemporaryDirectory() as tmp:
        w = build_workload(a.workload, Path(tmp))
        wf = Path(tmp) / "workload.json"
        wf.write_text(json.dumps(w))
        results, floor = {}, None
        for side in a.sides.split(","):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--side", side, "--workload_json", str(wf)]
            path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                print(f"{side} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
                return 1
            raw = json.loads(line[-1][7:])
            results[side] = summarise(raw, a.peak_tflops)
            print(
                f"{side}: first (uncounted) step {raw['steps'][0]['step_s']:.1f} s"
                + (f", compiled {raw['compiled']}" if "compiled" in raw else ""),
                flush=True,
            )
            if side in ("ours", "async") and floor is None:
                floor = physical_floor(raw, w, a)
            print(side, json.dumps({k: round(v, 3) for k, v in results[side].items()}), flush=True)
    if "trl" not in results or len(results) < 2:  # no comparison: the lines above are the result
        return 0
    trl, names = results["trl"], {"ours": "rlvr", "async": "rlvr async"}
    mine = {names[k]: v for k, v in results.items() if k != "trl"}
    print(
        f"\nworkload {a.workload} on {a.device}: {a.prompts} prompts x {a.samples} samples, "
        f"max {w['max_new_tokens']} new tokens, {a.steps} steps (first not counted), {a.threads} CPU thread(s)"
        + (", rlvr with sampler.compile" if a.compile else "")
        + "".join(f", rlvr {kv}" for kv in a.set)
        + (", rlvr async: one step off-policy, sampler in its own process" if "async" in results else "")
    )
    head = [*mine, "TRL", *(f"{n}/TRL" for n in mine)]
    print("| metric           | " + " | ".join(f"{h:>12}" for h in head) + " |")
    print("|" + "-" * 18 + "|" + "|".join("-" * 14 for _ in head) + "|")
    for k in trl:
        cells = [v[k] for v in mine.values()] + [trl[k]]
        for v in mine.values():  # > 1 favours rlvr
            r = trl[k] / v[k] if k in ("step s", "peak GB") else (v[k] / trl[k] if trl[k] else float("nan"))
            cells.append(float("nan") if k == "gen share" else r)  # a share, not a speed
        fmt = [f"{c:>12.3f}" for c in cells[: len(mine) + 1]] + [f"{c:>11.2f}x" for c in cells[len(mine) + 1 :]]
        print(f"| {k:<16} | " + " | ".join(fmt) + " |")
    ours = results.get("ours", next(iter(results.values())))
    print(
        "(ratios > 1 favour rlvr: for step s and peak GB the ratio is TRL/rlvr; learner MFU counts 6 x params x\n"
        " every prompt and completion token, as the usual definition does, but rlvr runs a group's prompt once\n"
        " for its samples, so on prompt-heavy workloads its figure can pass 100%; TRL's GRPOConfig turns\n"
        " gradient checkpointing on by default, rlvr's model.gradient_checkpointing is off: peak GB reflects that;\n"
        " rlvr async overlaps sampling with learning: its step s is the learner's, its peak GB the learner\n"
        " process's, its sample tok/s the sampler's while the learner runs beside it)"
    )
    print(
        f"physical floor of this step: {floor:.3f} s ({a.peak_tbps:.3g} TB/s, {a.peak_tflops:.3g} TFLOP/s); "
        f"rlvr is {ours['step s'] / floor:.1f}x it, TRL {trl['step s'] / floor:.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
