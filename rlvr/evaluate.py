"""Evaluate a model, or another system's generations, on math and code benchmarks: pass@k, maj@k, plots.

    # sample a model: 8 completions per problem, unbiased pass@1/4/8, maj@k, greedy accuracy
    python -m rlvr.evaluate --model rlvr/tiny/model --dataset rlvr/tiny/data/test.jsonl --n 8 --k 1,4,8 \\
        --max_new_tokens 48 --limit 200 --output_dir runs/eval_tiny
    python -m rlvr.evaluate --model runs/r1/final --dataset math500 --n 16 --k 1,4,16 --backend vllm
    # grade a JSONL of {"id", "completion"} lines from any system (no model is loaded)
    python -m rlvr.evaluate --dataset humaneval --data_path HumanEval.jsonl.gz --predictions preds.jsonl
    # grade the dataset's own reference solutions (a check of loaders and verifiers)
    python -m rlvr.evaluate --dataset gsm8k --data_path gsm8k_test.jsonl --grade_references
    # reward / accuracy / length curves of a training run (writes RUN_DIR/curves.png)
    python -m rlvr.evaluate plot_run runs/tiny_zero

Datasets: ``gsm8k``, ``math500``, ``aime24``, ``humaneval``, ``mbpp`` (the test split, task ids 11-510)
load from the hub by default, or from a local copy given with ``--data_path``; ``--dataset PATH`` takes any
JSONL/JSON/parquet file whose fields are recognised (question/problem/prompt/text; answer; HumanEval or
MBPP test columns make it a code set). Problem ids, used by ``--predictions``, are the dataset's own
(MATH-500 ``unique_id``, HumanEval/MBPP ``task_id``, AIME ``id``), else the 0-based row index (GSM8K).
A HumanEval completion continues the prompt (human-eval's convention) unless it holds a complete program
in a fenced block; an MBPP completion is a complete program.

Scoring goes through the registered verifiers (``math``; ``code`` runs programs in the sandbox).
Outputs in ``--output_dir``: ``samples.jsonl`` (one line per completion: id, prompt, completion,
extracted answer, verdict, reward), ``summary.json`` (``n_problems``, ``pass@K``, ``maj@K``,
``greedy_accuracy``, each with ``_se``, a standard error over problems; ``by_group`` for MATH-500's
subject and level), ``pass_at_k.png``, ``accuracy_by_group.png`` where the data has groups, and a table
on stdout. An interrupted run resumes: completions already in ``samples.jsonl`` are not generated again.

The training loop calls ``evaluate_problems`` with its own sampler.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import os
import random
import re
import sys
from collections import Counter
from pathlib import Path

from rlvr import data as data_lib
from rlvr.config import ConfigError
from rlvr.data import DataError, Problem

# name -> hub (id, config, split), fields, verifier, the column holding a reference solution, and the
# prompt template a base model is evaluated with (code sets are continued as plain text).
BENCHMARKS = {
    "gsm8k": dict(hub=("openai/gsm8k", "main", "test"), question="question", answer="answer", id=None,
                  reference="answer", verifier="math", template="r1_zero"),
    "math500": dict(hub=("HuggingFaceH4/MATH-500", None, "test"), question="problem", answer="answer",
                    id="unique_id", reference="solution", verifier="math", template="r1_zero"),
    "aime24": dict(hub=("HuggingFaceH4/aime_2024", None, "train"), question="problem", answer="answer", id="id",
                   reference="solution", verifier="math", template="r1_zero"),
    "humaneval": dict(hub=("openai/openai_humaneval", None, "test"), question="prompt", answer=None, id="task_id",
                      reference="canonical_solution", verifier="code", template="plain"),
    "mbpp": dict(hub=("google-research-datasets/mbpp", "full", "test"), question="text", answer=None, id="task_id",
                 reference="code", verifier="code", template="plain"),
}
MBPP_TEST_IDS = range(11, 511)  # the standard split: 1-10 are few-shot examples, 511+ train/validation
GROUP_FIELDS = ("subject", "level")  # per-group breakdown wherever every row has the field
DEFAULT_TIMEOUT_S = {"math": 5.0, "code": 10.0}  # per completion (math) / per program run (code)


# ---------------------------------------------------------------------------------------------
# datasets


def _hub_rows(hub_id: str, config: str | None, split: str) -> list[tuple[str, dict]]:
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # offline, renamed, gated: all end with the same advice
        raise DataError(f"could not load {hub_id} ({split}) from the hub: {e}; offline, give a local copy "
                        f"with --data_path FILE") from None
    return [(f"{hub_id}[{split}] row {i}", dict(r)) for i, r in enumerate(ds)]


def _first(row: dict, names) -> str | None:
    return next((f for f in names if f in row), None)


def load_benchmark(dataset: str, data_path: str | None = None, *, question_field: str | None = None,
                   answer_field: str | None = None, id_field: str | None = None) -> tuple[list[Problem], dict]:
    """A named benchmark (hub, or ``data_path``) or a file -> (problems, spec). ``spec`` holds ``name``,
    ``verifier``, ``template``, ``reference`` (the column with a reference solution) and ``groups``."""
    dataset = str(dataset)
    if dataset in BENCHMARKS:
        spec = dict(BENCHMARKS[dataset], name=dataset)
        rows = data_lib.read_rows(data_path, spec["hub"][2]) if data_path else _hub_rows(*spec["hub"])
    elif Path(dataset).expanduser().exists() or data_path:
        rows = data_lib.read_rows(data_path or dataset, "test")
        spec = dict(name=Path(data_path or dataset).name, question=None, answer=None, id=None, reference=None,
                    verifier=None, template="r1_zero")
    else:
        raise ConfigError(f"unknown dataset {dataset!r}: choose one of {', '.join(BENCHMARKS)}, or give a path to "
                          f"a JSONL/JSON/parquet file")
    if not rows:
        raise DataError(f"{data_path or dataset}: no rows")
    first = rows[0][1]
    code = "test_list" in first or ("test" in first and "entry_point" in first)
    spec["verifier"] = spec["verifier"] or ("code" if code else "math")
    spec["question"] = question_field or spec["question"] or _first(first, ("question", "problem", "prompt", "text"))
    spec["answer"] = answer_field or spec["answer"] or (None if code else _first(first, ("answer", "solution")))
    if id_field:
        spec["id"] = id_field
    elif dataset not in BENCHMARKS:
        spec["id"] = _first(first, ("unique_id", "task_id", "id"))
    spec["reference"] = spec["reference"] or _first(first, ("solution", "canonical_solution", "code")) or (
        spec["answer"] if "####" in str(first.get(spec["answer"], "")) else None)
    spec["groups"] = [g for g in GROUP_FIELDS if all(g in r for _, r in rows)]
    if spec["question"] is None:
        raise DataError(f"{rows[0][0]}: no question field (looked for question, problem, prompt, text; the row has "
                        f"{', '.join(first)}); name it with --question_field")

    problems = []
    for i, (where, row) in enumerate(rows):
        meta = dict(row)
        if "test_list" in meta:
            if dataset == "mbpp" and int(meta["task_id"]) not in MBPP_TEST_IDS:
                continue
            for key in ("test_list", "challenge_test_list"):  # some copies store the lists as Python literals
                if isinstance(meta.get(key), str):
                    meta[key] = ast.literal_eval(meta[key])
            # MBPP's published numbers use test_list only; the code verifier would add the challenge tests.
            meta.pop("challenge_test_list", None)
        for key in (spec["question"], spec["answer"], spec["id"]):
            if key is not None and row.get(key) is None:
                raise DataError(f"{where}: row has no '{key}' field (it has: {', '.join(row)})")
        question = str(row[spec["question"]])
        if "test_list" in meta and spec["question"] == "text":  # MBPP's standard prompt shows the tests
            question = f"{question}\nYour code should pass these tests:\n\n" + "\n".join(meta["test_list"]) + "\n"
        answer = data_lib.parse_answer(row[spec["answer"]], "auto") if spec["answer"] else ""
        if spec["name"] == "aime24":  # "025": an integer written with leading zeros
            answer = str(int(answer))
        pid = str(row[spec["id"]]) if spec["id"] else str(i)
        problems.append(Problem(question, answer, meta, pid))
    if len({p.id for p in problems}) != len(problems):
        raise DataError(f"{data_path or dataset}: problem ids ({spec['id'] or 'row index'}) are not unique; "
                        f"name a unique field with --id_field")
    return problems, spec


# ---------------------------------------------------------------------------------------------
# metrics


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    # the product form avoids the huge binomials of large n
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_at_k(answers: list[str | None], correct: list[bool], k: int, *, max_subsets: int = 2000,
                  draws: int = 500, seed: int = 0) -> float:
    """Expected accuracy of a majority vote over k of the samples drawn without replacement.

    Every correct answer is one vote for the gold answer (they are all equivalent to it); wrong answers
    vote by their whitespace-free text; ``None`` (nothing extracted) abstains. A tie between the gold
    answer and t-1 others scores 1/t. Exact over all k-subsets when there are at most ``max_subsets``,
    else the mean of ``draws`` random subsets."""
    labels = [True if c else (re.sub(r"\s+", "", a) if a else None) for a, c in zip(answers, correct)]
    n = len(labels)

    def vote(sub) -> float:
        counts = Counter(labels[i] for i in sub if labels[i] is not None)
        if not counts:
            return 0.0
        top = max(counts.values())
        winners = [lab for lab, c in counts.items() if c == top]
        return (True in winners) / len(winners)

    if math.comb(n, k) <= max_subsets:
        subsets = list(itertools.combinations(range(n), k))
    else:
        rng = random.Random(seed)
        subsets = [rng.sample(range(n), k) for _ in range(draws)]
    return sum(vote(s) for s in subsets) / len(subsets)


def _mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error over problems."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def summarize(problems: list[Problem], records: list[dict], ks, verifier: str, groups=()) -> dict:
    """Per-sample records -> summary: pass@k (each k <= the fewest samples of any problem), maj@k (math),
    greedy accuracy, each with ``_se``, and ``by_group`` (field -> value -> the same metrics)."""
    sampled: dict[str, list[dict]] = {}
    greedy: dict[str, dict] = {}
    for r in records:
        if r["sample"] == "greedy":
            greedy[r["id"]] = r
        else:
            sampled.setdefault(r["id"], []).append(r)
    probs = [p for p in problems if p.id in sampled or p.id in greedy]
    if not probs:
        raise DataError("no graded completions to summarize")
    n_min = min((len(sampled.get(p.id, [])) for p in probs), default=0)
    ks = sorted({int(k) for k in ks})
    used = [k for k in ks if 1 <= k <= n_min]

    def metrics(subset: list[Problem]) -> dict:
        out: dict = {"n_problems": len(subset)}
        if n_min:
            for k in used:
                vals = [pass_at_k(len(sampled[p.id]), sum(r["verdict"] == "correct" for r in sampled[p.id]), k)
                        for p in subset]
                out[f"pass@{k}"], out[f"pass@{k}_se"] = _mean_se(vals)
            if verifier == "math":
                for k in used:
                    vals = [majority_at_k([r["extracted"] for r in sampled[p.id]],
                                          [r["verdict"] == "correct" for r in sampled[p.id]], k) for p in subset]
                    out[f"maj@{k}"], out[f"maj@{k}_se"] = _mean_se(vals)
        if all(p.id in greedy for p in subset):
            vals = [float(greedy[p.id]["verdict"] == "correct") for p in subset]
            out["greedy_accuracy"], out["greedy_accuracy_se"] = _mean_se(vals)
        return out

    summary = metrics(probs)
    flat = [r for p in probs for r in sampled.get(p.id, [])]
    summary.update({"solved": sum(any(r["verdict"] == "correct" for r in sampled.get(p.id, [])) for p in probs),
                    "samples_per_problem": n_min, "n_samples": len(flat), "verifier": verifier,
                    "missing_problems": len(problems) - len(probs),
                    "verifier_errors": sum(r["verdict"] == "error" for r in records)})
    if flat:
        summary["mean_reward"] = sum(r["reward"] or 0.0 for r in flat) / len(flat)
    lens = [r["tokens"] for r in flat if r.get("tokens") is not None]
    if lens:
        summary["response_tokens_mean"] = sum(lens) / len(lens)
        summary["truncated_frac"] = sum(bool(r.get("truncated")) for r in flat) / len(flat)
    if [k for k in ks if k not in used]:
        summary["skipped_k"] = [k for k in ks if k not in used]  # more than the samples there are
    summary["by_group"] = {}
    for g in groups:
        values = sorted({str(p.meta[g]) for p in probs}, key=lambda v: (not v.isdigit(), v.zfill(8)))
        summary["by_group"][g] = {v: metrics([p for p in probs if str(p.meta[g]) == v]) for v in values}
    return summary


# ---------------------------------------------------------------------------------------------
# generation and grading


def _read_samples(path: Path) -> list[dict]:
    """The records of an earlier (maybe interrupted) run; a torn last line is dropped."""
    if not path.exists():
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # written up to a crash: what follows is regenerated
    return out


def _is_humaneval(meta: dict) -> bool:
    return all(isinstance(meta.get(key), str) for key in ("prompt", "test", "entry_point"))


def _grade(records: list[dict], problems: dict[str, Problem], verifier: str, timeout_s: float) -> None:
    """Fill in ``reward``, ``verdict`` and ``extracted`` of the records, in place."""
    import verifiers

    probs = [problems[r["id"]] for r in records]
    # human-eval's convention: an unfenced completion continues the prompt, even when it restates the
    # function (the prompt's imports then still apply); a fenced block is a program of its own.
    texts = [p.meta["prompt"] + r["completion"] if _is_humaneval(p.meta) and "```" not in r["completion"]
             else r["completion"] for r, p in zip(records, probs)]
    rewards = verifiers.score_batch(verifier, texts, [p.answer for p in probs], [p.meta for p in probs],
                                    timeout_s=timeout_s)
    if verifier == "math":
        from verifiers.math import extract_answer
    for r, v in zip(records, rewards):
        r["reward"] = v
        r["verdict"] = "error" if v is None else ("correct" if v >= 1.0 else "wrong")
        r["extracted"] = extract_answer(r["completion"]) if verifier == "math" else None


def evaluate_problems(sampler, problems: list[Problem], prompts: list[list[int]], *, verifier: str = "math",
                      n: int = 1, k=(1,), temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 1024,
                      seed: int = 0, greedy: bool = True, timeout_s: float | None = None,
                      prompt_texts: list[str] | None = None, samples_path: str | Path | None = None,
                      groups=(), batch_seqs: int = 256, progress: bool = False) -> dict:
    """Sample ``n`` completions of each prompt (and a greedy one), grade them, return ``summarize``'s dict.

    ``samples_path``: per-sample JSONL, appended as batches finish; completions already there are not
    generated again. The training loop passes its own sampler, e.g. every N steps:
    ``evaluate_problems(sampler, test_set, test_prompts, n=4, k=(1, 4), temperature=1.0, max_new_tokens=...)``.
    """
    from tqdm import tqdm

    timeout_s = timeout_s or DEFAULT_TIMEOUT_S.get(verifier, 5.0)
    by_id = {p.id: p for p in problems}
    path = Path(samples_path) if samples_path else None
    records = [r for r in (_read_samples(path) if path else []) if r.get("id") in by_id
               and (r["sample"] == "greedy" or r["sample"] < n)]
    have = Counter(r["id"] for r in records if r["sample"] != "greedy")
    have_greedy = {r["id"] for r in records if r["sample"] == "greedy"}
    # (problem index, first sample index, how many, temperature): the work left, in batches of ~batch_seqs
    todo: dict[int, list[int]] = {}
    for i, p in enumerate(problems):
        if have[p.id] < n:
            todo.setdefault(n - have[p.id], []).append(i)
    jobs = []
    for m, idx in todo.items():
        step = max(1, batch_seqs // m)
        jobs += [(idx[s:s + step], m, False) for s in range(0, len(idx), step)]
    samples_are_greedy = temperature == 0 and n == 1
    if greedy and not samples_are_greedy:
        idx = [i for i, p in enumerate(problems) if p.id not in have_greedy]
        jobs += [(idx[s:s + batch_seqs], 1, True) for s in range(0, len(idx), batch_seqs)]
    out = open(path, "a") if path else None
    bar = tqdm(total=sum(len(j[0]) * j[1] for j in jobs), desc="evaluate", unit="seq", disable=not progress,
               dynamic_ncols=True)
    try:
        for idx, m, is_greedy in jobs:
            # a seed per batch that does not depend on what an earlier run finished, for reproducible resumes
            ro = sampler.generate([prompts[i] for i in idx], m, temperature=0.0 if is_greedy else temperature,
                                  top_p=top_p, max_new_tokens=max_new_tokens, seed=seed * 1_000_003 + idx[0] * 31 + m)
            new = []
            for j, i in enumerate(idx):
                p = problems[i]
                for s in range(m):
                    row = j * m + s
                    new.append({"id": p.id, "sample": "greedy" if is_greedy else n - m + s,
                                "prompt": prompt_texts[i] if prompt_texts else None, "completion": ro.texts[row],
                                "tokens": len(ro.completion_ids[row]), "truncated": bool(ro.truncated[row])
                                if ro.truncated else None})
            _grade(new, by_id, verifier, timeout_s)
            records += new
            if out:
                out.write("".join(json.dumps(r) + "\n" for r in new))
                out.flush()
                os.fsync(out.fileno())
            bar.update(len(new))
    finally:
        bar.close()
        if out:
            out.close()
    if greedy and samples_are_greedy:
        records += [dict(r, sample="greedy") for r in records if r["sample"] == 0]
    return summarize(problems, records, k, verifier, groups)


def read_predictions(path: str | Path, problems: list[Problem], dataset: str) -> list[dict]:
    """``{"id", "completion"}`` lines -> records (sample numbers in file order per id); every bad line is
    an error naming the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist")
    ids = {p.id for p in problems}
    example = ", ".join(repr(p.id) for p in problems[:3])
    counts: Counter = Counter()
    records = []
    for line_no, row in data_lib.read_jsonl(path):
        for key in ("id", "completion"):
            if key not in row:
                raise DataError(f"{path}:{line_no}: missing field '{key}'; each line is "
                                f"{{\"id\": ..., \"completion\": \"...\"}} (it has: {', '.join(row) or 'nothing'})")
        if not isinstance(row["completion"], str):
            raise DataError(f"{path}:{line_no}: 'completion' must be a string, got {type(row['completion']).__name__}")
        pid = str(row["id"])
        if pid not in ids:
            raise DataError(f"{path}:{line_no}: unknown problem id {pid!r} for dataset {dataset} (its ids look "
                            f"like {example}; GSM8K and plain files use the 0-based row index)")
        records.append({"id": pid, "sample": counts[pid], "prompt": None, "completion": row["completion"]})
        counts[pid] += 1
    if not records:
        raise DataError(f"{path}: no predictions")
    return records


# ---------------------------------------------------------------------------------------------
# output: table and plots


def format_table(summary: dict, title: str = "") -> str:
    rows = [(k, summary[k], summary.get(f"{k}_se")) for k in summary
            if re.fullmatch(r"(pass|maj)@\d+|greedy_accuracy|mean_reward|response_tokens_mean|truncated_frac", k)]
    lines = [title] if title else []
    lines.append(f"{'metric':<22}{'value':>9}{'± se':>9}")
    lines += [f"{k:<22}{v:>9.4f}" + (f"{se:>9.4f}" if se is not None else "") for k, v, se in rows]
    for g, values in summary.get("by_group", {}).items():
        # the smallest and largest k and greedy: the whole grid is in summary.json
        first = next(iter(values.values()))
        ks = [c for c in first if re.fullmatch(r"pass@\d+", c)]
        cols = list(dict.fromkeys(c for c in (ks[:1] + ks[-1:] + [ks[-1].replace("pass", "maj")] if ks else [])
                                  + ["greedy_accuracy"] if c in first))
        lines.append("")
        lines.append(f"{g:<24}{'n':>5}" + "".join(f"{c:>17}" for c in cols))
        for v, m in values.items():
            lines.append(f"{v[:24]:<24}{m['n_problems']:>5}" +
                         "".join(f"{m[c]:>9.3f} ± {m[c + '_se']:.3f}" for c in cols))
    return "\n".join(lines)


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
                ax.annotate(f"{v:.3f}", (k, v), textcoords="offset points", xytext=(6, -10 if name == "maj" else 6),
                            fontsize=8)
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
        ax.set_xticks(range(len(names)), [f"{v}\n(n={values[v]['n_problems']})" for v in names],
                      rotation=30 if len(names) > 5 else 0, ha="right" if len(names) > 5 else "center", fontsize=8)
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
    """Reward, accuracy and response-length curves of a training run's ``metrics.jsonl`` -> a PNG
    (``RUN_DIR/curves.png`` unless ``path``). Raw values are drawn faint under a moving average."""
    run = Path(run_dir).expanduser()
    rows = _read_samples(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else None
    if not rows:
        raise DataError(f"{run}: no metrics.jsonl with rows (is it a training run's output_dir?)")
    panels = [("reward", lambda k: k.startswith("reward/") and "std" not in k),
              ("accuracy", lambda k: k == "accuracy" or (k.startswith("eval/") and ("acc" in k or "@" in k)
                                                         and not k.endswith("_se"))),
              ("response length (tokens)", lambda k: k in ("response/len", "response/len_max"))]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
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
                smooth = [sum(vals[max(0, j - w + 1):j + 1]) / len(vals[max(0, j - w + 1):j + 1]) for j in range(len(vals))]
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


# ---------------------------------------------------------------------------------------------
# command line


def _parse_ks(k) -> list[int]:
    items = k if isinstance(k, (list, tuple)) else str(k).split(",")
    try:
        ks = sorted({int(x) for x in items if str(x).strip()})
    except ValueError:
        raise ConfigError(f"--k {k!r}: give sample counts separated by commas, e.g. --k 1,4,16") from None
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k {k!r}: every k must be at least 1")
    return ks


def evaluate(model: str | None = None, dataset: str | None = None, data_path: str | None = None,
             predictions: str | None = None, grade_references: bool = False, output_dir: str | None = None,
             n: int = 1, k="1", temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 1024,
             template: str | None = None, system_prompt: str | None = None, backend: str = "hf",
             limit: int | None = None, seed: int = 0, greedy: bool = True, timeout_s: float | None = None,
             batch_seqs: int = 256, dtype: str = "float32", max_prompt_tokens: int = 4096, cpu_threads: int = 0,
             question_field: str | None = None, answer_field: str | None = None, id_field: str | None = None,
             plots: bool = True) -> dict:
    """Evaluate ``model`` on ``dataset`` (or grade ``predictions``); writes ``output_dir``; returns the summary."""
    import torch

    from rlvr.log import prepare_output_dir, write_json_atomic

    if not dataset:
        raise ConfigError(f"give --dataset: one of {', '.join(BENCHMARKS)}, or a path to a JSONL/JSON/parquet file")
    if sum(map(bool, (model, predictions, grade_references))) != 1:
        raise ConfigError("give exactly one of --model PATH (generate), --predictions FILE (grade existing "
                          "completions) or --grade_references (grade the dataset's reference solutions)")
    ks = _parse_ks(k)
    if backend not in ("hf", "vllm"):
        raise ConfigError(f"--backend {backend!r}: choose hf or vllm")
    if n < 1:
        raise ConfigError(f"--n must be at least 1, got {n}")
    problems, spec = load_benchmark(dataset, data_path, question_field=question_field, answer_field=answer_field,
                                    id_field=id_field)
    all_problems = problems
    problems = problems[: int(limit)] if limit else problems
    name = spec["name"]
    out = prepare_output_dir(output_dir or f"runs/eval/{Path(name).stem}")
    verifier, timeout = spec["verifier"], timeout_s or DEFAULT_TIMEOUT_S[spec["verifier"]]
    title = f"{name} - {model or predictions or 'reference solutions'}"

    if model:
        template = template or spec["template"]
        run_info = {"model": model, "dataset": dataset, "data_path": data_path, "template": template,
                    "system_prompt": system_prompt, "temperature": temperature, "top_p": top_p,
                    "max_new_tokens": max_new_tokens, "seed": seed, "backend": backend}
        info_path = out / "run.json"
        if (out / "samples.jsonl").exists() and info_path.exists():
            before = json.loads(info_path.read_text())
            diff = {key: (before.get(key), v) for key, v in run_info.items() if before.get(key) != v}
            if diff:
                raise ConfigError(f"{out} holds samples made with other settings ({', '.join(f'{a}: {b[0]!r} -> {b[1]!r}' for a, b in diff.items())}); "
                                  f"use another --output_dir, or delete {out / 'samples.jsonl'} to start over")
        write_json_atomic(info_path, run_info)
        if cpu_threads:
            torch.set_num_threads(cpu_threads)
        from rlvr import config as config_lib, grpo, model as model_lib

        cfg = config_lib.Config(
            seed=seed, model=config_lib.ModelConfig(path=model, dtype=dtype),
            sampler=config_lib.SamplerConfig(backend=backend, temperature=temperature, top_p=top_p,
                                             max_new_tokens=max_new_tokens, batch_seqs=batch_seqs))
        if backend == "hf":
            lm, tok = model_lib.load(cfg.model, "cuda" if torch.cuda.is_available() else "cpu")
        else:  # vLLM loads its own weights; only the tokenizer is needed here
            from transformers import AutoTokenizer

            lm, tok = None, AutoTokenizer.from_pretrained(model)
        prompts = data_lib.encode_prompts(problems, tok, template, max_prompt_tokens, system_prompt, name)
        context = getattr(getattr(lm, "config", None), "max_position_embeddings", None)
        if context and max(map(len, prompts)) + max_new_tokens > context:
            raise DataError(f"the longest prompt ({max(map(len, prompts))} tokens) plus --max_new_tokens={max_new_tokens} "
                            f"exceeds the model's context of {context} tokens; lower --max_new_tokens")
        try:
            sampler = grpo.make_sampler(cfg, lm, tok)
        except ImportError as e:  # the vllm backend is optional: say what is missing, not where
            raise ConfigError(f"--backend {backend} is not available here ({e}); use --backend hf") from None
        summary = evaluate_problems(
            sampler, problems, prompts, verifier=verifier, n=n, k=ks, temperature=temperature, top_p=top_p,
            max_new_tokens=max_new_tokens, seed=seed, greedy=greedy, timeout_s=timeout,
            prompt_texts=[tok.decode(p) for p in prompts], samples_path=out / "samples.jsonl",
            groups=spec["groups"], batch_seqs=batch_seqs, progress=True)
    else:
        if predictions:
            records = read_predictions(predictions, all_problems, name)
        else:
            if not spec["reference"]:
                raise DataError(f"{name}: no reference-solution column to grade")
            records = [{"id": p.id, "sample": 0, "prompt": None, "completion": str(p.meta[spec["reference"]])}
                       for p in all_problems]
        keep = {p.id for p in problems}
        records = [r for r in records if r["id"] in keep]
        by_id = {p.id: p for p in problems}
        from tqdm import tqdm

        for s in tqdm(range(0, len(records), 256), desc="grade", unit="batch", dynamic_ncols=True):
            _grade(records[s:s + 256], by_id, verifier, timeout)
        for r in records:
            r["prompt"] = by_id[r["id"]].question
        with open(out / "samples.jsonl", "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        summary = summarize(problems, records, ks, verifier, spec["groups"])
        summary["failed_ids"] = sorted({r["id"] for r in records if r["verdict"] != "correct"})

    summary = {"dataset": name, "model": model, "predictions": predictions, **summary}
    if plots:
        summary["plots"] = [str(p) for p in (plot_pass_at_k(summary, out / "pass_at_k.png", title),
                                             plot_groups(summary, out / "accuracy_by_group.png", title)) if p]
    write_json_atomic(out / "summary.json", summary)
    print(format_table(summary, f"{title}: {summary['n_problems']} problems, n={summary['samples_per_problem']}, "
                                f"solved by some sample: {summary['solved']}/{summary['n_problems']}"))
    print(f"outputs in {out}")
    return summary


def main(argv: list[str] | None = None) -> int:
    import fire

    from rlvr.model import ModelError

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__.strip())
        return 2
    fn, argv = (plot_run, argv[1:]) if argv[0] == "plot_run" else (evaluate, argv)
    try:
        result = fire.Fire(fn, command=argv, name="rlvr.evaluate", serialize=lambda _: None)
    except (ConfigError, DataError, ModelError, FileNotFoundError, PermissionError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if fn is plot_run:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
