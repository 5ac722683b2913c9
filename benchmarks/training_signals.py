"""Three training signals on the CPU demo at equal numbers of sampled completions: GRPO (the verifiers' rewards,
recipes/tiny_zero.yaml), rejection sampling (fine-tuning on the best of each problem's samples,
recipes/tiny_rejection_sampling.yaml) and on-policy distillation (a teacher's log-probability of every sampled
token, recipes/tiny_distill.yaml, whose teacher rlvr/tiny/zero_model is tiny_zero's GRPO-trained model).

    python benchmarks/training_signals.py                        # 3 methods x 3 seeds, one run at a time: ~35 min
    python benchmarks/training_signals.py --methods grpo,distill --seeds 0

Every run is `python -m rlvr.train RECIPE` with overrides that give it the same budget, --samples completions drawn
from the student (GRPO and distillation: 16 prompts x 8 samples a step; rejection sampling: 3 rounds of
--samples / 24 prompts x 8 samples), and the held-out greedy accuracy on --problems problems, measured every
--eval_every steps (GRPO, distillation) or after each round (rejection sampling). Prints the teacher's accuracy and
a table (accuracy at each number of samples drawn where it was measured, the samples drawn until the first
measurement >= 0.9, wall time; mean and spread over seeds) and writes OUT/accuracy.png (accuracy against samples
drawn) and OUT/results.json. The count is the student's samples only: the teacher itself was trained by a GRPO run
that drew as many.
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
TEACHER = "rlvr/tiny/zero_model"
METHODS = {  # name -> (recipe, label)
    "grpo": ("recipes/tiny_zero.yaml", "GRPO (verifier rewards)"),
    "rejection_sampling": ("recipes/tiny_rejection_sampling.yaml", "rejection sampling (best of 8, SFT)"),
    "distill": ("recipes/tiny_distill.yaml", "on-policy distillation (teacher log-probs)"),
}
ROUNDS = 3  # rejection sampling's rounds (the recipe's), each drawing samples / ROUNDS completions


def overrides(method: str, seed: int, a) -> dict:
    """The run's overrides: the budget of --samples completions, the evaluation points, the output dir."""
    from rlvr.config import load_config

    cfg = load_config(REPO / METHODS[method][0])
    over = {"seed": seed, "eval.problems": a.problems, "output_dir": str(Path(a.out) / f"{method}-seed{seed}")}
    if method == "rejection_sampling":
        per_prompts = ROUNDS * cfg.rejection_sampling.samples_per_prompt
        if a.samples % per_prompts:
            raise SystemExit(f"--samples must be a multiple of {per_prompts} (rounds x samples per prompt)")
        return over | {
            "rejection_sampling.rounds": ROUNDS,
            "rejection_sampling.prompts_per_round": a.samples // per_prompts,
        }
    per_step = cfg.rl.prompts_per_step * cfg.rl.samples_per_prompt
    if a.samples % per_step:
        raise SystemExit(f"--samples must be a multiple of {per_step} ({method}'s samples per step)")
    return over | {"rl.steps": a.samples // per_step, "eval.every_steps": a.eval_every}


def run_one(method: str, seed: int, a) -> dict:
    over = overrides(method, seed, a)
    out = Path(over["output_dir"])
    if not (out / "summary.json").exists():
        cmd = [sys.executable, "-m", "rlvr.train", METHODS[method][0], *(f"--{k}={v}" for k, v in over.items())]
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"{method} seed {seed} failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    curve = [(0, summary["eval_initial"]["accuracy"])]
    if method == "rejection_sampling":
        s = cfg["rejection_sampling"]
        per_round = s["prompts_per_round"] * s["samples_per_prompt"]
        curve += [(r * per_round, row["round/accuracy"]) for r, row in enumerate(_with(rows, "round/accuracy"), 1)]
    else:
        drawn, group = 0, cfg["rl"]["samples_per_prompt"]
        for row in rows:
            drawn += row["sampling/kept_groups"] * group  # every group drawn (no dynamic sampling in these recipes)
            if "eval/accuracy" in row:
                curve.append((drawn, row["eval/accuracy"]))
        curve.append((drawn, summary["eval_final"]["accuracy"]))
    return {
        "method": method,
        "seed": seed,
        "curve": curve,
        "samples": curve[-1][0],
        "final": summary["eval_final"]["accuracy"],
        "samples_to_0.9": next((n for n, acc in curve if acc >= 0.9), None),
        "wall_s": summary["wall_s"],
    }


def _with(rows: list[dict], key: str) -> list[dict]:
    return [r for r in rows if key in r]


def teacher_accuracy(problems: int) -> float:
    """The teacher's held-out greedy accuracy, measured as the runs measure the student's."""
    import torch

    from rlvr import data as data_lib, model as model_lib
    from rlvr.config import ModelConfig, load_config
    from rlvr.rl import greedy_eval
    from rlvr.sampler import make_sampler

    torch.set_num_threads(1)
    cfg = load_config(REPO / METHODS["distill"][0], {"eval.problems": problems})
    teacher = ModelConfig(path=str(REPO / TEACHER))
    model, tok = model_lib.load(teacher)
    test_set = data_lib.load_prompt_set(str(REPO / cfg.data.test), "test", cfg.data, tok, limit=problems)
    return greedy_eval(cfg, make_sampler(cfg.sampler, teacher, model, tok), test_set)["accuracy"]


def spread(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def table(results: list[dict]) -> str:
    """Accuracy at every number of samples drawn where some method measured it ("-": not measured there)."""
    points = sorted({n for r in results for n, _ in r["curve"]})
    head = " | ".join(f"{n:.0f}" for n in points)
    lines = [
        f"| method \\ samples drawn | {head} | samples to 0.9 (runs reaching it) | wall s |",
        "|---" * (len(points) + 3) + "|",
    ]
    for method in dict.fromkeys(r["method"] for r in results):
        rs = [r for r in results if r["method"] == method]
        at = [[dict(r["curve"]).get(n) for r in rs] for n in points]
        accs = [spread(v, ".3f") if None not in v else "-" for v in at]
        hit = [r["samples_to_0.9"] for r in rs if r["samples_to_0.9"] is not None]
        lines.append(
            f"| {METHODS[method][1]} | {' | '.join(accs)} | {spread(hit, '.0f') if hit else '-'} ({len(hit)}/{len(rs)})"
            f" | {spread([r['wall_s'] for r in rs], '.0f')} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], teacher: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, method in enumerate(dict.fromkeys(r["method"] for r in results)):
        curves = [dict(r["curve"]) for r in results if r["method"] == method]
        xs = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [statistics.mean(c[x] for c in curves) for x in xs]
        ax.plot(xs, mean, "o-", color=f"C{i}", label=METHODS[method][1], ms=3)
        lo, hi = [min(c[x] for c in curves) for x in xs], [max(c[x] for c in curves) for x in xs]
        ax.fill_between(xs, lo, hi, color=f"C{i}", alpha=0.12)
    ax.axhline(teacher, color="black", ls="--", lw=1, label=f"teacher ({teacher:.3f})")
    ax.axhline(0.9 * teacher, color="gray", ls=":", lw=1, label="90% of the teacher")
    ax.set_xlabel("completions sampled from the student")
    ax.set_ylabel("held-out greedy accuracy (mean, min-max over seeds)")
    ax.set_title("tiny_zero task: three training signals at equal samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samples", type=int, default=3840, help="completions each run draws (tiny_zero's 30 steps)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each uses one thread)")
    p.add_argument("--eval_every", type=int, default=5, help="steps between evaluations (GRPO, distillation)")
    p.add_argument("--problems", type=int, default=200)
    p.add_argument("--out", default=str(REPO / "runs" / "training_signals"))
    a = p.parse_args()
    methods, seeds = a.methods.split(","), [int(s) for s in a.seeds.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    teacher = teacher_accuracy(a.problems)
    with ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, a), [(m, s) for m in methods for s in seeds]))
    (Path(a.out) / "results.json").write_text(json.dumps({"teacher_accuracy": teacher, "runs": results}, indent=1))
    plot(results, teacher, Path(a.out) / "accuracy.png")
    print(f"teacher ({TEACHER}) held-out greedy accuracy: {teacher:.3f} on {a.problems} problems\n")
    print(table(results))
    print(f"\ncurves: {Path(a.out) / 'accuracy.png'}; per-run outputs in {a.out}")


if __name__ == "__main__":
    main()
