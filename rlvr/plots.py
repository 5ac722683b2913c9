"""Plots: pass@k and per-group accuracy of an evaluation, and the curves of a training run.

python -m rlvr.evaluate plot_run runs/tiny_zero       # RUN_DIR/curves.png from its metrics.jsonl
"""

from __future__ import annotations

import re
from pathlib import Path

from rlvr.data import DataError
from rlvr.grading import EPISODE_MEANS
from rlvr.log import read_records


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display on servers
    import matplotlib.pyplot as plt

    return plt


def plot_pass_at_k(summary: dict, path: Path, title: str = "") -> Path | None:
    ks = sorted(int(k.split("@")[1]) for k in summary if re.fullmatch(r"pass@\d+", k))
    if not ks:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, style in (("pass", "o-"), ("maj", "s--")):
        if f"{name}@{ks[0]}" in summary:
            y = [summary[f"{name}@{k}"] for k in ks]
            err = [1.96 * summary[f"{name}@{k}_se"] for k in ks]
            ax.errorbar(ks, y, yerr=err, fmt=style, capsize=3, label=f"{name}@k")
            for k, v in zip(ks, y):
                ax.annotate(
                    f"{v:.3f}", (k, v), textcoords="offset points", xytext=(6, -10 if name == "maj" else 6), fontsize=8
                )
    if "greedy_accuracy" in summary:
        ax.axhline(summary["greedy_accuracy"], color="gray", ls=":", label=f"greedy {summary['greedy_accuracy']:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlim(ks[0] / 1.4, ks[-1] * 1.6)  # room for the value labels
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, min(1.0, max(0.05, ax.get_ylim()[1])) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(f"{title}\n{summary['n_problems']} problems, n={summary['samples_per_problem']}, 95% CI", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_groups(summary: dict, path: Path, title: str = "") -> Path | None:
    groups = summary.get("by_group") or {}
    if not groups:
        return None
    metric = "pass@1" if "pass@1" in summary else "greedy_accuracy"
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (g, values) in zip(axes[0], groups.items()):
        names = list(values)
        y = [values[v].get(metric, float("nan")) for v in names]
        err = [1.96 * values[v].get(f"{metric}_se", 0.0) for v in names]
        ax.bar(range(len(names)), y, yerr=err, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(
            range(len(names)),
            [f"{v}\n(n={values[v]['n_problems']})" for v in names],
            rotation=30 if len(names) > 5 else 0,
            ha="right" if len(names) > 5 else "center",
            fontsize=8,
        )
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} by {g}")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{title} (95% CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(run_dir: str, path: str | None = None) -> str:
    """Reward, accuracy and response-length curves of a training run's ``metrics.jsonl`` (and, for episodes with an
    environment, turns and tool calls per episode) -> a PNG (``RUN_DIR/curves.png`` unless ``path``). Raw values
    are drawn faint under a moving average."""
    run = Path(run_dir).expanduser()
    rows = read_records(run / "metrics.jsonl")
    if not rows:
        raise DataError(f"{run}: no metrics.jsonl with rows (is it a training run's output_dir?)")
    panels = [
        ("reward", lambda k: k.startswith("reward/") and "std" not in k),
        (
            "accuracy",
            lambda k: k == "accuracy" or (k.startswith("eval/") and ("acc" in k or "@" in k) and not k.endswith("_se")),
        ),
        ("response length (tokens)", lambda k: k in ("response/len", "response/len_max")),
    ]
    if any("env/turns" in r or "eval/turns" in r for r in rows):
        # env/* of the sampled episodes, eval/* of the greedy ones
        panels.append(("episodes: turns, tool calls (per episode)", lambda k: k.split("/")[-1] in EPISODE_MEANS))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (name, want) in zip(axes, panels):
        keys = sorted({k for r in rows for k in r if want(k)})
        for i, key in enumerate(keys):
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if not pts:
                continue
            steps, vals = zip(*pts)
            color = f"C{i}"
            if len(vals) > 8 and not key.startswith("eval/"):
                w = max(2, len(vals) // 15)
                smooth = [
                    sum(vals[max(0, j - w + 1) : j + 1]) / len(vals[max(0, j - w + 1) : j + 1])
                    for j in range(len(vals))
                ]
                ax.plot(steps, vals, color=color, alpha=0.25, lw=1)
                ax.plot(steps, smooth, color=color, lw=2, label=key)
            else:
                ax.plot(steps, vals, "o-" if key.startswith("eval/") else "-", color=color, lw=2, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
    fig.suptitle(str(run), fontsize=10)
    fig.tight_layout()
    out = Path(path) if path else run / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return str(out)
