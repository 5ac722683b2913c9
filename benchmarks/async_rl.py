"""Asynchronous against synchronous RL on the CPU demo, back to back: held-out accuracy against training wall time.

    python benchmarks/async_rl.py                   # 1 seed: the two 30-step runs and their evaluations, ~6 min
    python benchmarks/async_rl.py --seeds 0 1 2 --k 1

Runs ``python -m rlvr.train recipes/tiny_zero.yaml`` (sample, then learn, one thread) and
``recipes/tiny_zero_async.yaml`` (the same recipe, the sampler in its own process on core 1, ``--k`` steps ahead of
the learner on core 0) one after the other for each seed, each saving a checkpoint every ``--every`` steps.
Afterwards every checkpoint's greedy accuracy on the held-out problems is measured here, so neither run evaluates
while it trains. Time is wall time since the run began (``perf/elapsed_s`` at the step): loading, the greedy
evaluation before training (the asynchronous sampler already samples during it), every step and checkpoint.

Prints, per seed and checkpoint, both runs' time and accuracy, then the time each run took to reach the
synchronous run's final accuracy and the ratio; writes OUT/accuracy_vs_time.png and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = {"sync": "recipes/tiny_zero.yaml", "async": "recipes/tiny_zero_async.yaml"}


def train(name: str, seed: int, a, out: Path) -> Path:
    run_dir = out / f"{name}_seed{seed}"
    cmd = [sys.executable, "-m", "rlvr.train", RUNS[name], f"--output_dir={run_dir}", f"--seed={seed}"]
    cmd += [f"--rl.steps={a.steps}", f"--checkpoint_every={a.every}", "--keep_last=0", "--log.tensorboard=false"]
    if name == "async":
        cmd += [f"--async_rl.max_off_policy_steps={a.k}"]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return run_dir


def curve(run_dir: Path, every: int, steps: int) -> list[dict]:
    """[{step, time_s, accuracy}] at every checkpoint and the final model."""
    import torch

    from rlvr import data as data_lib, model as model_lib
    from rlvr.config import load_config
    from rlvr.rl import greedy_eval
    from rlvr.sampler import make_sampler

    torch.set_num_threads(2)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    elapsed = [0.0] + [r["perf/elapsed_s"] for r in rows]
    cfg = load_config(run_dir / "config.yaml")
    out = []
    for step in [*range(every, steps, every), steps]:
        path = run_dir / ("final" if step == steps else f"checkpoints/step_{step}")
        model, tok = model_lib.load(load_config(None, {"model.path": str(path)}).model)
        _, test_set = data_lib.load_train_test(cfg, tok, None)
        sampler = make_sampler(cfg.sampler, cfg.model, model, tok, cfg.seed)
        acc = greedy_eval(cfg, sampler, test_set)["accuracy"]
        out.append({"step": step, "time_s": round(elapsed[step], 2), "accuracy": acc})
    return out


def time_to(points: list[dict], target: float) -> float | None:
    return next((p["time_s"] for p in points if p["accuracy"] >= target), None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=int, default=3, help="checkpoint (and evaluate) every N steps")
    p.add_argument("--k", type=int, default=1, help="async_rl.max_off_policy_steps")
    p.add_argument("--out", default="/tmp/rlvr_async_rl")
    a = p.parse_args()
    out = Path(a.out)
    results = {}
    for seed in a.seeds:
        dirs = {name: train(name, seed, a, out) for name in RUNS}  # back to back, nothing else running
        res = {name: curve(d, a.every, a.steps) for name, d in dirs.items()}
        wall = {name: json.loads((d / "summary.json").read_text())["wall_s"] for name, d in dirs.items()}
        target = res["sync"][-1]["accuracy"]
        initial = json.loads((dirs["sync"] / "summary.json").read_text())["eval_initial"]["accuracy"]
        reach = {name: time_to(pts, target) for name, pts in res.items()}
        results[seed] = {"initial": initial, "curves": res, "wall_s": wall, "target": target, "time_to_target_s": reach}
        print(f"\nseed {seed}: held-out greedy accuracy against training time (s)")
        print("| step | sync s | sync acc | async s | async acc |\n|------|--------|----------|---------|-----------|")
        for s, y in zip(res["sync"], res["async"]):
            cells = f"{s['step']:>4} | {s['time_s']:>6.1f} | {s['accuracy']:>8.3f} | {y['time_s']:>7.1f}"
            print(f"| {cells} | {y['accuracy']:>9.3f} |")
        ratio = f"{reach['sync'] / reach['async']:.2f}x" if reach["async"] else "not reached"
        print(
            f"time to the synchronous run's final accuracy {target:.3f}: sync {reach['sync']:.1f} s, async "
            f"{reach['async'] if reach['async'] is None else round(reach['async'], 1)} s ({ratio} less); "
            f"whole runs end to end: sync {wall['sync']} s, async {wall['async']} s "
            f"({wall['sync'] / wall['async']:.2f}x)",
            flush=True,
        )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "accuracy_vs_time.png", a.k)
    print(f"\n{out / 'results.json'}, {out / 'accuracy_vs_time.png'}")
    return 0


def plot(results: dict, path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, r in results.items():
        for name, style in (("sync", "-o"), ("async", "-s")):
            pts = r["curves"][name]
            label = "synchronous" if name == "sync" else f"asynchronous, {k} step off-policy"
            x, y = [0.0] + [p["time_s"] for p in pts], [r["initial"]] + [p["accuracy"] for p in pts]
            ax.plot(x, y, style, label=f"{label} (seed {seed})", ms=3)
    ax.set_xlabel("wall time since the run began (s), 2 CPU cores")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title("tiny_zero: GRPO, sample then learn vs sampler ahead")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
