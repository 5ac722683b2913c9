"""The policy-gradient family side by side on the CPU demo: tiny_zero trained with each (advantage estimator,
policy loss) pair that makes sense, over several seeds, in one invocation.

    python benchmarks/algorithms.py                         # 8 pairs x 3 seeds, 2 runs at a time: ~30 min
    python benchmarks/algorithms.py --pairs gae:ppo,grpo:ppo --seeds 0 --jobs 1

Prints a table (steps to 0.9 held-out greedy accuracy, final accuracy, mean step time, samples drawn; mean
and spread over seeds) and writes runs/algorithms/accuracy.png (held-out greedy accuracy against steps) and
runs/algorithms/results.json. Every run is `python -m rlvr.train recipes/tiny_zero.yaml` with overrides, its
held-out greedy accuracy measured every --eval_every steps on --problems problems.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# (estimator, loss) -> the overrides it needs beyond the recipe's. GSPO clips one ratio per sequence (the
# paper's 3e-4 / 4e-4) under a token mean per sequence; CISPO clips its weight above only, as MiniMax-M1.
PAIRS = {
    "grpo:ppo": {},
    "drgrpo:ppo": {},
    "rloo:ppo": {},
    "reinforce_pp:ppo": {},
    "reinforce_pp_baseline:ppo": {},
    "gae:ppo": {"rl.critic.lr": 3e-3, "rl.lam": 1.0},
    "grpo:gspo": {"rl.loss_agg": "seq_mean_token_mean", "rl.clip_low": 3e-4, "rl.clip_high": 4e-4},
    "grpo:cispo": {"rl.clip_low": 1.0},
}


def run_one(pair: str, seed: int, a) -> dict:
    advantage, loss = pair.split(":")
    out = Path(a.out) / f"{advantage}-{loss}-seed{seed}"
    over = {
        "rl.advantage": advantage,
        "rl.policy_loss": loss,
        "seed": seed,
        "eval.every_steps": a.eval_every,
        "eval.problems": a.problems,
        "output_dir": str(out),
        **PAIRS[pair],
    }
    if not (out / "summary.json").exists():
        cmd = [sys.executable, "-m", "rlvr.train", "recipes/tiny_zero.yaml", *(f"--{k}={v}" for k, v in over.items())]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{pair} seed {seed} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    group = yaml.safe_load((out / "config.yaml").read_text())["rl"]["samples_per_prompt"]
    curve = [(0, summary["eval_initial"]["accuracy"])]
    curve += [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    curve.append((summary["steps"], summary["eval_final"]["accuracy"]))
    reached = next((s for s, acc in curve if acc >= 0.9), None)
    return {
        "pair": pair,
        "seed": seed,
        "curve": curve,
        "steps_to_0.9": reached,
        "final": summary["eval_final"]["accuracy"],
        "step_s": statistics.mean(r["perf/step_s"] for r in rows),
        "samples": sum(r["sampling/kept_groups"] for r in rows) * group,
        "wall_s": summary["wall_s"],
    }


def spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def table(results: list[dict], seeds: int) -> str:
    lines = [
        "| estimator:loss | steps to 0.9 (runs reaching it) | final accuracy | step s | samples drawn |",
        "|---|---|---|---|---|",
    ]
    for pair in dict.fromkeys(r["pair"] for r in results):
        rs = [r for r in results if r["pair"] == pair]
        hit = [r["steps_to_0.9"] for r in rs if r["steps_to_0.9"] is not None]
        lines.append(
            f"| {pair} | {spread(hit, '.1f') if hit else '-'} ({len(hit)}/{len(rs)}) | "
            f"{spread([r['final'] for r in rs], '.3f')} | {spread([r['step_s'] for r in rs], '.2f')} | "
            f"{statistics.mean(r['samples'] for r in rs):.0f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, pair in enumerate(dict.fromkeys(r["pair"] for r in results)):
        curves = [dict(r["curve"]) for r in results if r["pair"] == pair]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [statistics.mean(c[s] for c in curves) for s in steps]
        lo = [min(c[s] for c in curves) for s in steps]
        hi = [max(c[s] for c in curves) for s in steps]
        ax.plot(steps, mean, "o-", color=f"C{i}", label=pair, ms=3)
        ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.12)
    ax.axhline(0.9, color="gray", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out greedy accuracy (mean, min-max over seeds)")
    ax.set_title("tiny_zero: advantage estimator x policy loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated estimator:loss pairs")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one thread)")
    p.add_argument("--eval_every", type=int, default=3)
    p.add_argument("--problems", type=int, default=200)
    p.add_argument("--out", default=str(REPO / "runs" / "algorithms"))
    a = p.parse_args()
    pairs, seeds = a.pairs.split(","), [int(s) for s in a.seeds.split(",")]
    unknown = [x for x in pairs if x not in PAIRS]
    if unknown:
        p.error(f"unknown pairs {unknown}; choose from {', '.join(PAIRS)}")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, a), [(x, s) for x in pairs for s in seeds]))
    (Path(a.out) / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, Path(a.out) / "accuracy.png")
    print(table(results, len(seeds)))
    print(f"\ncurves: {Path(a.out) / 'accuracy.png'}; per-run outputs in {a.out}")


if __name__ == "__main__":
    main()
