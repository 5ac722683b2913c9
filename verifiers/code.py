"""Reward ``code``: run the model's program against the task's tests, isolated by ``sandbox``.

    rewards:
      - {verifier: code, weight: 1.0}

Where the tests come from (the dataset row's columns arrive as ``meta``):

* HumanEval: ``test`` (defines ``check(candidate)``) and ``entry_point``; ``prompt`` is prepended when
  the completion only continues it (does not define ``entry_point`` itself).
* MBPP: ``test_list`` (assert statements) and optionally ``test_setup_code``.
* function calls (APPS / TACO / LiveCodeBench / verl ``prime_code``): ``fn_name`` with ``inputs`` and
  ``outputs``: each input is the list of arguments (or, LiveCodeBench style, a string holding one JSON
  value per line, its output then JSON too); the call is ``fn_name(*args)``, or
  ``Solution().fn_name(*args)`` when the program defines that class. The program runs after
  ``PRELUDE`` (``List``, ``defaultdict``, ``heappush``, ``lru_cache``, ``inf``... need no import), but
  only a function the program binds itself is called (the prelude's ``operator.add`` never is).
  Each return value is shipped out as plain data and compared here: equal, tuples read as lists
  (JSON has none), and where every expected output is a one-element list (APPS wraps them) its
  element also matches. A completion's calls share one sandbox run, which ``timeout_s`` bounds.
* stdin/stdout: ``inputs`` + ``outputs`` lists, or ``cases`` / ``test_cases`` = ``[{"input", "output"}]``
  (or the same as JSON in ``answer``). Output is compared line by line, trailing whitespace ignored.
* ``input_output`` (APPS / TACO), a dict or its JSON: ``inputs`` + ``outputs`` (+ ``fn_name``) as above.
* otherwise ``answer`` itself, if it holds assert statements.

Malformed tests raise ``ValueError`` naming the test case and what is wrong (the row then scores
``None``, never a pass): inputs and outputs of different lengths, no cases at all, a case without
``input`` or ``output``, tests that do not parse, a stdin input that is not text (``str``, a list of
lines, or ``None`` for no input), an expected output that is not text, function arguments that are
not a list (or JSON lines), an empty ``test_list``.

The program is the last fenced code block of the completion (preferring ```` ```python ```` blocks and
the one that defines ``entry_point``), else the whole completion.

Reward: ``"all"`` (default, 1.0 only if every test passes) or ``"fraction"`` (share of the test
statements / cases that pass); set ``REWARD_MODE`` here or ``reward_mode`` in the row's meta.
A sandbox failure (not the program's) gives ``None``. ``score_batch`` runs every program of every
completion in parallel, on ``workers`` jails (default: the sandbox's, two per core).
"""

from __future__ import annotations

import ast
import atexit
import functools
import json
import re
import threading
from dataclasses import dataclass

import sandbox
from verifiers import register

REWARD_MODE = "all"  # or "fraction"
TIMEOUT_S = 10.0  # per program run, unless the row's meta has timeout_s
MEMORY_MB = 2048

# What function-call problems (LiveCodeBench, APPS, verl's prime_code) run their solutions after.
PRELUDE = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\nfrom random import *\n"
    "from statistics import *\nfrom itertools import *\nfrom functools import *\nfrom operator import *\n"
    "from io import *\nfrom sys import *\nfrom json import *\nfrom builtins import *\nfrom typing import *\n"
    "import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics, itertools\n"
    "import functools, operator, io, sys, json\nsys.setrecursionlimit(50000)\n"
)

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
    if any(
        isinstance(n, (ast.Return, ast.Nonlocal, ast.Global, ast.Yield)) for stmt in check.body for n in ast.walk(stmt)
    ):
        return fallback
    others = [n for n in tree.body if n is not check]
    alias = ast.parse(f"{check.args.args[0].arg} = {entry_point}").body
    module = ast.Module(body=others + alias + check.body, type_ignores=[])
    return ast.unparse(module) + "\n"


def mbpp_tests(test_list, test_setup_code: str = "") -> str:
    return (test_setup_code or "") + "\n" + "\n".join(test_list) + "\n"


# ----------------------------------------------------------------------------- reading the tests


def _json(value, what: str):
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None


def _case_source(meta: dict, answer: str) -> dict | None:
    """The dict holding stdin/stdout or function-call cases, or None when the row has none."""
    if "inputs" in meta or "outputs" in meta:
        return meta
    for key in ("input_output", "cases", "test_cases"):
        if key in meta:
            data = _json(meta[key], key)
            if isinstance(data, list) and key != "input_output":
                data = {"cases": data}
            if not isinstance(data, dict):
                raise ValueError(f"{key} must be a dict with inputs and outputs, not {type(data).__name__}")
            if "fn_name" in meta and "fn_name" not in data:
                data = {**data, "fn_name": meta["fn_name"]}
            return data
    if answer and answer.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(answer)
        except ValueError:
            return None
        data = data if isinstance(data, dict) else {"cases": data}
        if any(k in data for k in ("inputs", "cases", "test_cases")):
            return data
    return None


def _pairs(data: dict) -> tuple[list, list]:
    """(inputs, outputs) of equal, non-zero length, or ValueError naming the case that is wrong."""
    key = next((k for k in ("cases", "test_cases") if k in data), None)
    if key is not None:
        cases = _json(data[key], key)
        if isinstance(cases, dict):
            return _pairs(cases)
        if not isinstance(cases, list):
            raise ValueError(f"{key} must be a list of {{'input', 'output'}}, not {type(cases).__name__}")
        for i, case in enumerate(cases):
            if not isinstance(case, dict):
                raise ValueError(f"test case {i}: a {type(case).__name__}, not a dict with 'input' and 'output'")
            for k in ("input", "output"):
                if k not in case:
                    raise ValueError(f"test case {i}: no {k!r}")
        data = {"inputs": [c["input"] for c in cases], "outputs": [c["output"] for c in cases]}
    for k in ("inputs", "outputs"):
        if k not in data:
            raise ValueError(f"{k!r} is missing: inputs and outputs go together")
        if not isinstance(data[k], (list, tuple)):
            raise ValueError(f"{k!r} must be a list, not {type(data[k]).__name__}")
    ins, outs = list(data["inputs"]), list(data["outputs"])
    if len(ins) != len(outs):
        missing = "input" if len(ins) < len(outs) else "expected output"
        raise ValueError(f"test case {min(len(ins), len(outs))}: no {missing} ({len(ins)} inputs, {len(outs)} outputs)")
    if not ins:
        raise ValueError("no test cases")
    return ins, outs


def _text(i: int, value, what: str) -> str:
    """A stdin input or expected output as text: a str, a list of lines, or (an input only) None."""
    if value is None and what == "input":
        return ""  # no input at all, not the text "None"
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "".join(line + "\n" for line in value)
    raise ValueError(f"test case {i}: the {what} is {type(value).__name__}; expected text (a str or a list of lines)")


def _call_case(i: int, inp, out) -> tuple[list, object]:
    """(arguments, expected value) of one function-call case."""
    if isinstance(inp, str):  # LiveCodeBench: one JSON value per line, the output JSON too
        args = []
        for n, line in enumerate(inp.splitlines()):
            if line.strip():
                try:
                    args.append(json.loads(line))
                except ValueError:
                    raise ValueError(f"test case {i}: input line {n + 1} is not JSON: {line[:80]!r}") from None
        try:
            return args, json.loads(out) if isinstance(out, str) else out
        except ValueError:
            raise ValueError(f"test case {i}: the output is not JSON: {out[:80]!r}") from None
    if not isinstance(inp, (list, tuple)):
        raise ValueError(f"test case {i}: the input is {type(inp).__name__}; expected the list of arguments")
    if not _is_data(inp):  # checked here: the sandbox would refuse it and, with it, the whole batch
        raise ValueError(
            f"test case {i}: the arguments are not plain data (None, bool, int, float, str, list, dict...)"
        )
    return list(inp), out


def _is_data(value, depth: int = 0) -> bool:
    if depth > 50:
        return False
    if value is None or type(value) in (bool, int, float, str, bytes):
        return True
    if type(value) in (list, tuple, set, frozenset):
        return all(_is_data(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(_is_data(k, depth + 1) and _is_data(v, depth + 1) for k, v in value.items())
    return False


@functools.lru_cache(maxsize=4096)
def _parse_error(tests: str) -> str | None:
    """Why the tests do not parse, or None (cached: the completions of one prompt share their tests)."""
    try:
        ast.parse(tests)
    except (SyntaxError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _str(meta: dict, key: str) -> str:
    if not isinstance(meta[key], str):
        raise ValueError(f"{key!r} must be a str, not {type(meta[key]).__name__}")
    return meta[key]


def _assert_tests(meta: dict) -> str | None:
    """The assert-statement tests of the HumanEval and MBPP forms, or None."""
    if "test" in meta and meta.get("entry_point"):
        return humaneval_tests(_str(meta, "test"), _str(meta, "entry_point"))
    if "test_list" in meta:
        tests = []
        for key in ("test_list", "challenge_test_list"):
            value = meta.get(key) or []
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{key!r} must be a list of assert statements, not {type(value).__name__}")
            for i, t in enumerate(value):
                if not isinstance(t, str):
                    raise ValueError(f"{key}[{i}] is {type(t).__name__}, not an assert statement")
            tests += value
        if not tests:
            raise ValueError("'test_list' is empty: no tests")
        return mbpp_tests(tests, meta.get("test_setup_code") or "")
    return None


@dataclass
class _Row:
    """One completion's sandbox requests and how to score what comes back."""

    kind: str  # "tests" | "io" | "call"
    requests: list
    expected: list  # io: the expected stdout per case; call: the expected value per call
    wrapped: bool = False  # call: every expected value is a one-element list (APPS style)
    mode: str = REWARD_MODE


def _row(completion: str, answer: str, meta: dict) -> _Row:
    """The row's tests as sandbox requests; ValueError when it has none or they are malformed."""
    limits = {"timeout_s": float(meta.get("timeout_s", TIMEOUT_S)), "memory_mb": int(meta.get("memory_mb", MEMORY_MB))}
    mode = meta.get("reward_mode", REWARD_MODE)
    entry = meta.get("entry_point") if isinstance(meta.get("entry_point"), str) else None
    program = extract_program(completion, entry)
    tests = _assert_tests(meta)
    source = _case_source(meta, answer) if tests is None else None
    if tests is None and source is None and answer and "assert" in answer:
        tests = answer
    if tests is not None:
        why = _parse_error(tests)
        if why is not None:
            raise ValueError(f"the tests do not parse: {why}")
        if entry and meta.get("prompt") and not re.search(rf"\bdef\s+{re.escape(entry)}\s*\(", program):
            program = _str(meta, "prompt") + program
        return _Row("tests", [dict(limits, code=program, tests=tests)], [], mode=mode)
    if source is None:
        raise ValueError(
            "no tests in meta (test+entry_point, test_list, fn_name+inputs/outputs, inputs/outputs, "
            "cases, input_output) or answer"
        )
    ins, outs = _pairs(source)
    if source.get("fn_name") is not None:
        name = source["fn_name"]
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"fn_name must be a function name, not {name!r}")
        cases = [_call_case(i, inp, out) for i, (inp, out) in enumerate(zip(ins, outs, strict=True))]
        expected = [out for _, out in cases]
        wrapped = all(type(e) is list and len(e) == 1 for e in expected)
        request = dict(limits, code=program, prelude=PRELUDE, call=name, args=[args for args, _ in cases])
        return _Row("call", [request], expected, wrapped, mode)
    stdins = [_text(i, inp, "input") for i, inp in enumerate(ins)]
    expected = [_text(i, out, "output") for i, out in enumerate(outs)]
    return _Row("io", [dict(limits, code=program, stdin=stdin) for stdin in stdins], expected, mode=mode)


# ----------------------------------------------------------------------------- scoring


def _normalize(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _as_json(value):
    """Tuples as lists, all the way down: JSON test data has no tuples."""
    if type(value) in (list, tuple):
        return [_as_json(v) for v in value]
    if type(value) is dict:
        return {k: _as_json(v) for k, v in value.items()}
    return value


def _same_value(got, expected, wrapped: bool) -> bool:
    got, expected = _as_json(got), _as_json(expected)
    return bool(got == expected or (wrapped and got == expected[0]))


def _reward(row: _Row, verdicts: list) -> float | None:
    if any(v.sandbox_error for v in verdicts):
        return None
    if row.kind == "tests":
        v = verdicts[0]
        if row.mode == "fraction" and v.tests_total:
            return v.tests_passed / v.tests_total
        return 1.0 if v.passed else 0.0
    if row.kind == "call":
        ok = [
            c.returned and _same_value(c.value, e, row.wrapped)
            for c, e in zip(verdicts[0].calls, row.expected, strict=True)
        ]
    else:
        ok = [
            v.passed and not v.stdout_truncated and _normalize(v.stdout) == _normalize(e)
            for v, e in zip(verdicts, row.expected, strict=True)
        ]
    return sum(ok) / len(ok) if row.mode == "fraction" else float(all(ok))


_pools: dict[int, sandbox.Pool] = {}
_pools_lock = threading.Lock()


def _pool(workers: int | None) -> sandbox.Pool | None:
    """The sandbox pool of ``workers`` jails (kept for the next call); None: the sandbox's default."""
    if not workers:
        return None
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = sandbox.Pool(int(workers))
        return _pools[workers]


@atexit.register
def _close_pools() -> None:
    for p in _pools.values():
        p.close()


def score_batch(
    completions,
    answers,
    metas,
    *,
    timeout_s: float | None = None,
    workers: int | None = None,
    errors: list | None = None,
) -> list[float | None]:
    """One reward per completion (None: malformed tests or a sandbox failure, each reported in
    ``errors`` as ``(index, message)`` when a list is given); every program of the batch runs in
    parallel on ``workers`` jails."""
    rows: list[_Row | None] = []
    flat: list[dict] = []
    for i, (completion, answer, meta) in enumerate(zip(completions, answers, metas, strict=True)):
        meta = dict(meta or {})
        if timeout_s is not None and "timeout_s" not in meta:
            meta["timeout_s"] = max(float(timeout_s), 1.0)
        try:
            row = _row(completion, answer, meta)
        except (ValueError, TypeError) as exc:
            rows.append(None)
            if errors is not None:
                errors.append((i, f"{type(exc).__name__}: {exc}"))
            continue
        rows.append(row)
        flat.extend(row.requests)
    verdicts = sandbox.run_batch(flat, pool=_pool(workers))
    rewards, start = [], 0
    for i, row in enumerate(rows):
        if row is None:
            rewards.append(None)
            continue
        mine, start = verdicts[start : start + len(row.requests)], start + len(row.requests)
        rewards.append(_reward(row, mine))
        if rewards[-1] is None and errors is not None:
            errors.append((i, "sandbox failure: " + "; ".join(v.reason for v in mine if v.sandbox_error)))
    return rewards


@register("code", batch=score_batch)
def code_reward(completion: str, answer: str, **meta) -> float:
    """Reward of one completion (see the module docstring); raises if the row has no tests or they
    are malformed, or if the sandbox failed."""
    row = _row(completion, answer, meta)
    verdicts = sandbox.run_batch(row.requests)
    reward = _reward(row, verdicts)
    if reward is None:
        raise RuntimeError("sandbox failure: " + "; ".join(v.reason for v in verdicts if v.sandbox_error))
    return reward
