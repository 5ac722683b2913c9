"""Turn completions into rewards with the recipe's weighted verifiers.

Two kinds of reward function plug in, both named in a recipe's ``rewards`` list:
- a verifier ``(completion, answer, **meta) -> float``, registered or ``file.py:function``; it runs in
  ``verifiers``' killable worker processes, so a hang or crash costs that sample, not the run;
- a TRL-style batch function ``(prompts, completions, **columns) -> list[float | None]`` (recognised by
  its first parameter being ``prompts``); it runs in this process (it may hold a model), and ``None``
  or an exception counts as a failed verdict.
A failed verdict scores 0 and is counted in ``verifier/<name>_failures``; the first failure of each
verifier is printed (its traceback, when it raised), once, on rank 0.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from pathlib import Path

import torch

import verifiers
from rlvr import dist
from rlvr.data import Problem


def reward_name(spec: str) -> str:
    return spec.rsplit(":", 1)[-1] if ":" in spec else Path(spec).stem


def is_batch_function(fn) -> bool:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "prompts"


def _call_batch(fn, prompts, completions, problems, errors: list) -> list[float | None]:
    # the raw question too (the rendered prompt is ``prompts``): an LM judge reads it, as TRL passes dataset columns
    columns: dict[str, list] = {"answer": [p.answer for p in problems], "question": [p.question for p in problems]}
    for key in problems[0].meta if problems else ():
        if all(key in p.meta for p in problems):
            columns.setdefault(key, [p.meta[key] for p in problems])
    try:
        out = list(fn(prompts=prompts, completions=completions, **columns))
    except Exception:
        errors.append((0, traceback.format_exc()))
        return [None] * len(completions)
    if len(out) != len(completions):
        errors.append((0, f"returned {len(out)} rewards for {len(completions)} completions"))
        return [None] * len(completions)
    return [None if v is None else float(v) for v in out]


def score(
    specs,
    prompts: list[str],
    completions: list[str],
    problems: list[Problem],
    *,
    timeout_s: float,
    workers: int | None = None,
) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
    """-> (total reward (B,), metrics, {verifier name: raw scores (B,)})."""
    total = torch.zeros(len(completions))
    metrics, raw = {}, {}
    for spec in specs:
        name, errors = reward_name(spec.verifier), []
        fn = verifiers.get(spec.verifier)
        if is_batch_function(fn):
            scores = _call_batch(fn, prompts, completions, problems, errors)
        else:
            scores = verifiers.score_batch(
                spec.verifier,
                completions,
                [p.answer for p in problems],
                [p.meta for p in problems],
                timeout_s=timeout_s,
                workers=workers or None,
                errors=errors,
            )
        if errors:
            report_first_failure(name, errors[0][1])
        values = torch.tensor([0.0 if s is None else s for s in scores])
        total += spec.weight * values
        raw[name] = values
        metrics[f"reward/{name}"] = values.mean().item()
        metrics[f"verifier/{name}_failures"] = float(sum(s is None for s in scores))
    return total, metrics, raw


_REPORTED: set[str] = set()


def report_first_failure(name: str, message: str, counted_in: str = "", what: str = "verifier") -> None:
    """Print the first failure of a verifier or an environment (its traceback, when it raised) once per name, on
    rank 0: a bug in a user's reward function or environment must not hide behind a failure count."""
    if name in _REPORTED:
        return
    _REPORTED.add(name)
    if dist.is_main():
        print(
            f"{what} {name!r} failed; it scores 0 and later failures are only counted in "
            f"{counted_in or f'verifier/{name}_failures'}. Its first failure:\n{message.rstrip()}",
            file=sys.stderr,
            flush=True,
        )
