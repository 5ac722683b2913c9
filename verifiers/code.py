"""Reward ``code``: run the model's program against the task's tests, isolated by ``sandbox``.

    rewards:
      - {verifier: code, weight: 1.0}

Where the tests come from (the dataset row's columns arrive as ``meta``):

* HumanEval: ``test`` (defines ``check(candidate)``) and ``entry_point``; ``prompt`` is prepended when
  the completion only continues it (does not define ``entry_point`` itself).
* MBPP: ``test_list`` (assert statements) and optionally ``test_setup_code``.
* stdin/stdout: ``inputs`` + ``outputs`` lists, or ``cases`` / ``test_cases`` = ``[{"input", "output"}]``
  (or the same as JSON in ``answer``). Output is compared line by line, trailing whitespace ignored.
* otherwise ``answer`` itself, if it holds assert statements.

The program is the last fenced code block of the completion (preferring ```` ```python ```` blocks and
the one that defines ``entry_point``), else the whole completion.

Reward: ``"all"`` (default, 1.0 only if every test passes) or ``"fraction"`` (share of the test
statements / stdin cases that pass); set ``REWARD_MODE`` here or ``reward_mode`` in the row's meta.
A sandbox failure (not the program's) gives ``None``. ``score_batch`` runs every program of every
completion on all cores at once.
"""

from __future__ import annotations

import ast
import json
import re

import sandbox
from verifiers import register

REWARD_MODE = "all"  # or "fraction"
TIMEOUT_S = 10.0  # per program run, unless the row's meta has timeout_s
MEMORY_MB = 2048

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_program(completion: str, entry_point: str | None = None) -> str:
    """The code of the completion: a fenced block (python first, the last one wins) or the text."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    if not blocks:
        return completion
    python = [b for lang, b in blocks if lang in ("python", "py", "python3")] or [b for _, b in blocks]
    if entry_point:
        defining = [b for b in python if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", b)]
        if defining:
            return defining[-1]
    return python[-1]


def humaneval_tests(test: str, entry_point: str) -> str:
    """HumanEval's ``check(candidate)`` turned into top-level asserts on ``entry_point``.

    Top-level asserts are test statements the sandbox counts (and judges outside) one by one.
    Falls back to ``test + check(entry_point)`` when the check function has an unusual shape.
    """
    fallback = f"{test}\n\ncheck({entry_point})\n"
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return fallback
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or len(checks[0].args.args) != 1:
        return fallback
    check = checks[0]
    if any(isinstance(n, (ast.Return, ast.Nonlocal, ast.Global, ast.Yield)) for stmt in check.body
           for n in ast.walk(stmt)):
        return fallback
    others = [n for n in tree.body if n is not check]
    alias = ast.parse(f"{check.args.args[0].arg} = {entry_point}").body
    module = ast.Module(body=others + alias + check.body, type_ignores=[])
    return ast.unparse(module) + "\n"


def mbpp_tests(test_list, test_setup_code: str = "") -> str:
    return (test_setup_code or "") + "\n" + "\n".join(test_list) + "\n"


def _cases(meta: dict, answer: str):
    if "inputs" in meta and "outputs" in meta:
        return list(zip(meta["inputs"], meta["outputs"]))
    for key in ("cases", "test_cases"):
        if key in meta:
            cases = meta[key]
            if isinstance(cases, str):
                cases = json.loads(cases)
            if isinstance(cases, dict):
                return list(zip(cases["inputs"], cases["outputs"]))
            return [(c["input"], c["output"]) for c in cases]
    if answer and answer.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(answer)
        except ValueError:
            return None
        meta2 = data if isinstance(data, dict) else {"cases": data}
        if meta2 is not meta and any(k in meta2 for k in ("inputs", "cases", "test_cases")):
            return _cases(meta2, "")
    return None


def _requests(completion: str, answer: str, meta: dict) -> tuple[str, list[dict]]:
    """("tests" | "io", sandbox requests) for one completion."""
    limits = {"timeout_s": float(meta.get("timeout_s", TIMEOUT_S)), "memory_mb": int(meta.get("memory_mb", MEMORY_MB))}
    entry = meta.get("entry_point")
    program = extract_program(completion, entry)
    if "test" in meta and entry:
        if meta.get("prompt") and not re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", program):
            program = meta["prompt"] + program
        return "tests", [dict(limits, code=program, tests=humaneval_tests(meta["test"], entry))]
    if "test_list" in meta:
        tests = list(meta["test_list"]) + list(meta.get("challenge_test_list") or [])
        return "tests", [dict(limits, code=program, tests=mbpp_tests(tests, meta.get("test_setup_code", "")))]
    cases = _cases(meta, answer)
    if cases is not None:
        return "io", [dict(limits, code=program, stdin=str(inp), expected=str(out)) for inp, out in cases]
    if answer and "assert" in answer:
        return "tests", [dict(limits, code=program, tests=answer)]
    raise ValueError("code verifier: no tests in meta (test+entry_point, test_list, inputs/outputs, cases) or answer")


def _normalize(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _reward(kind: str, reqs: list[dict], verdicts: list, mode: str) -> float | None:
    if any(v.sandbox_error for v in verdicts):
        return None
    if kind == "tests":
        v = verdicts[0]
        if mode == "fraction" and v.tests_total:
            return v.tests_passed / v.tests_total
        return 1.0 if v.passed else 0.0
    ok = [v.passed and not v.stdout_truncated and _normalize(v.stdout) == _normalize(r["expected"])
          for r, v in zip(reqs, verdicts)]
    if not ok:
        return 0.0
    return sum(ok) / len(ok) if mode == "fraction" else float(all(ok))


def score_batch(completions, answers, metas, *, timeout_s: float | None = None) -> list[float | None]:
    """One reward per completion; every program of the batch runs in parallel on all cores."""
    plans, flat = [], []
    for completion, answer, meta in zip(completions, answers, metas):
        meta = dict(meta or {})
        if timeout_s is not None and "timeout_s" not in meta:
            meta["timeout_s"] = max(float(timeout_s), 1.0)
        try:
            kind, reqs = _requests(completion, answer, meta)
        except (ValueError, KeyError, TypeError):
            plans.append(None)
            continue
        plans.append((kind, reqs, meta.get("reward_mode", REWARD_MODE), len(flat)))
        flat.extend(reqs)
    try:
        verdicts = sandbox.run_batch([{k: v for k, v in r.items() if k != "expected"} for r in flat])
    except SyntaxError:  # a row's tests do not parse: score one by one so only that row gets None
        verdicts = []
        for r in flat:
            try:
                verdicts.extend(sandbox.run_batch([{k: v for k, v in r.items() if k != "expected"}]))
            except SyntaxError:
                verdicts.append(sandbox.Verdict("fail", "tests do not parse", sandbox_error=True))
    rewards = []
    for plan in plans:
        if plan is None:
            rewards.append(None)
            continue
        kind, reqs, mode, start = plan
        rewards.append(_reward(kind, reqs, verdicts[start:start + len(reqs)], mode))
    return rewards


@register("code", batch=score_batch)
def code_reward(completion: str, answer: str, **meta) -> float:
    """Reward of one completion (see the module docstring); raises if the row has no tests."""
    kind, reqs = _requests(completion, answer, meta)
    verdicts = sandbox.run_batch([{k: v for k, v in r.items() if k != "expected"} for r in reqs])
    reward = _reward(kind, reqs, verdicts, meta.get("reward_mode", REWARD_MODE))
    if reward is None:
        raise RuntimeError("sandbox failure: " + "; ".join(v.reason for v in verdicts if v.sandbox_error))
    return reward
