"""Tests of verifiers.pool: killable persistent workers running user verifiers from files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import verifiers
from verifiers import pool

BOUND_S = 1.0
SLACK_S = 0.5

USER_FILE = textwrap.dedent(
    """
    import os, time

    def exact(completion, answer, **meta):
        return float(completion.strip() == answer.strip())

    def hang(completion, answer, **meta):
        if completion == "hang":
            while True:
                pass
        return 1.0

    def sleepy(completion, answer, **meta):
        time.sleep(float(completion))
        return 1.0

    def boom(completion, answer, **meta):
        raise ValueError("verifier bug")

    def die(completion, answer, **meta):
        os._exit(3)

    def nan(completion, answer, **meta):
        return float("nan")

    def not_a_number(completion, answer, **meta):
        return "yes"

    def exits(completion, answer, **meta):
        raise SystemExit(0)

    def uses_meta(completion, answer, **meta):
        return float(meta.get("weight", 0))

    def pid(completion, answer, **meta):
        return float(os.getpid())
    """
)


@pytest.fixture(scope="module")
def user_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "my_rewards.py"
    path.write_text(USER_FILE)
    return path


def spec(path: Path, fn: str) -> str:
    return f"{path}:{fn}"


def test_results_in_order(user_file):
    comps = ["a", "b", "a", "c", "a"]
    got = pool.run_isolated(spec(user_file, "exact"), comps, ["a"] * 5, timeout_s=BOUND_S, workers=2)
    assert got == [1.0, 0.0, 1.0, 0.0, 1.0]


def test_hanging_verifier_is_killed_and_pool_keeps_working(user_file):
    t = time.monotonic()
    got = pool.run_isolated(spec(user_file, "hang"), ["x", "hang", "y"], ["", "", ""], timeout_s=BOUND_S, workers=2)
    elapsed = time.monotonic() - t
    assert got == [1.0, None, 1.0]
    assert elapsed < BOUND_S + SLACK_S
    # the killed worker is replaced; the pool still answers, quickly
    t = time.monotonic()
    got = pool.run_isolated(spec(user_file, "exact"), ["a", "b"], ["a", "a"], timeout_s=BOUND_S)
    assert got == [1.0, 0.0]
    assert time.monotonic() - t < BOUND_S


def test_every_item_gets_its_own_bound(user_file):
    # three sleeps of 0.4 s on one worker: each is within a 1 s bound although the total is not
    got = pool.run_isolated(spec(user_file, "sleepy"), ["0.4"] * 3, [""] * 3, timeout_s=BOUND_S, workers=1)
    assert got == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("fn", ["boom", "die", "nan", "not_a_number", "exits"])
def test_failures_become_none(user_file, fn):
    got = pool.run_isolated(spec(user_file, fn), ["a", "b"], ["a", "b"], timeout_s=BOUND_S)
    assert got == [None, None]
    assert pool.run_isolated(spec(user_file, "exact"), ["a"], ["a"], timeout_s=BOUND_S) == [1.0]


def test_meta_is_passed_and_unpicklable_meta_is_none(user_file):
    metas = [{"weight": 0.5}, {"weight": lambda: 1}, {}]
    got = pool.run_isolated(spec(user_file, "uses_meta"), ["a"] * 3, ["a"] * 3, metas, timeout_s=BOUND_S)
    assert got == [0.5, None, 0.0]


def test_bad_spec_never_raises(tmp_path):
    assert pool.run_isolated(str(tmp_path / "missing.py:fn"), ["a"], ["a"]) == [None]
    assert pool.run_isolated("no_such_verifier", ["a", "b"], ["a", "b"]) == [None, None]


def test_workers_are_reused(user_file):
    first = pool.run_isolated(spec(user_file, "pid"), ["a"], ["a"], workers=1)
    second = pool.run_isolated(spec(user_file, "pid"), ["a"], ["a"], workers=1)
    assert first[0] is not None and first == second


def test_calls_from_threads(user_file):
    results: dict[int, list] = {}

    def call(k: int) -> None:
        comps = ["hang" if k == 0 else "x", str(k)]
        results[k] = pool.run_isolated(spec(user_file, "hang"), comps, ["", ""], timeout_s=BOUND_S, workers=1)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert time.monotonic() - t < 2 * (BOUND_S + SLACK_S)
    assert results[0] == [None, 1.0]
    assert all(results[k] == [1.0, 1.0] for k in (1, 2, 3))


def test_score_batch_uses_the_pool_for_file_verifiers(user_file):
    got = verifiers.score_batch(spec(user_file, "hang"), ["hang", "ok"], ["", ""], timeout_s=BOUND_S)
    assert got == [None, 1.0]


def test_async_callers(user_file):
    import asyncio

    async def main():
        loop = asyncio.get_running_loop()
        calls = [
            loop.run_in_executor(None, lambda: pool.run_isolated(spec(user_file, "exact"), ["a"], ["a"]))
            for _ in range(3)
        ]
        return await asyncio.gather(*calls)

    assert asyncio.run(main()) == [[1.0]] * 3


@pytest.mark.slow
def test_pool_after_torch_import(user_file):
    """The training process imports torch first; workers must neither break nor import it."""
    code = textwrap.dedent(
        f"""
        import sys, time
        import torch
        from verifiers import pool
        t = time.monotonic()
        got = pool.run_isolated({str(user_file) + ":hang"!r}, ["hang", "x"], ["", ""], timeout_s=1.0)
        assert got == [None, 1.0], got
        probe = {str(user_file.parent / "probe.py")!r}
        open(probe, "w").write("import sys\\ndef f(c, a, **m):\\n    return float('torch' in sys.modules)\\n")
        assert pool.run_isolated(probe + ":f", ["a"], ["a"]) == [0.0]
        print("ok", round(time.monotonic() - t, 2))
        """
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


# ----------------------------------------------------------------------------- why an item failed


@pytest.mark.parametrize(
    "fn, comps, why",
    [
        (
            "boom",
            ["a", "b"],
            [
                "Traceback (most recent call last)",
                'in boom\n    raise ValueError("verifier bug")',
                "ValueError: verifier bug",
            ],
        ),
        ("exits", ["a"], ["Traceback (most recent call last)", "SystemExit: 0"]),
        ("hang", ["hang", "x"], ["timed out after 1 s"]),
        ("die", ["a"], ["exited with status 3"]),
        ("not_a_number", ["a"], ["returned a str 'yes', not a number"]),
        ("nan", ["a"], ["returned nan, not a finite number"]),
    ],
)
def test_errors_report_why_each_item_failed(user_file, fn, comps, why):
    errors: list = []
    got = pool.run_isolated(spec(user_file, fn), comps, [""] * len(comps), timeout_s=BOUND_S, errors=errors)
    failed = [i for i, v in enumerate(got) if v is None]
    assert failed and [i for i, _ in errors] == failed  # one entry per failed item, none for the others
    for _, message in errors:
        assert all(w in message for w in why), message


def test_errors_for_unsendable_items_and_bad_specs(user_file, tmp_path):
    errors: list = []
    metas = [{"weight": 1}, {"weight": lambda: 1}]
    assert pool.run_isolated(spec(user_file, "uses_meta"), ["a", "a"], ["a", "a"], metas, errors=errors) == [1.0, None]
    assert len(errors) == 1 and errors[0][0] == 1 and "could not send the item" in errors[0][1]
    errors = []
    assert pool.run_isolated(spec(user_file, "missing_fn"), ["a", "b"], ["a", "b"], errors=errors) == [None, None]
    assert [i for i, _ in errors] == [0, 1]
    assert all("loading verifier" in m and "has no function 'missing_fn'" in m for _, m in errors), errors
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_rlvr\n")
    errors = []
    assert pool.run_isolated(f"{broken}:f", ["a"], ["a"], errors=errors) == [None]
    assert "ModuleNotFoundError: No module named 'no_such_module_rlvr'" in errors[0][1]


def test_score_batch_reports_errors_of_pool_verifiers(user_file):
    errors: list = []
    got = verifiers.score_batch(spec(user_file, "boom"), ["a"], [""], timeout_s=BOUND_S, errors=errors)
    assert got == [None] and "ValueError: verifier bug" in errors[0][1]
    assert verifiers.score_batch(spec(user_file, "exact"), ["a"], ["a"], errors=(errors := [])) == [1.0] and not errors


# ----------------------------------------------------------------------------- workers reach batch entries


def test_score_batch_passes_workers_and_errors_to_batch_entries(monkeypatch):
    seen = []

    def batch(completions, answers, metas, *, timeout_s, workers=None, errors=None):
        seen.append((timeout_s, workers, errors))
        return [1.0] * len(completions)

    def old_batch(completions, answers, metas, *, timeout_s):  # an entry written before workers/errors
        return [0.5] * len(completions)

    monkeypatch.setattr(verifiers, "_REGISTRY", dict(verifiers._REGISTRY))
    monkeypatch.setattr(verifiers, "_BATCH", dict(verifiers._BATCH))
    monkeypatch.setattr(verifiers, "_BATCH_KEYWORDS", dict(verifiers._BATCH_KEYWORDS))
    verifiers.register("spy", batch=batch)(lambda c, a, **m: 1.0)
    verifiers.register("old", batch=old_batch)(lambda c, a, **m: 1.0)
    errors: list = []
    assert verifiers.score_batch("spy", ["a"], [""], timeout_s=2.0, workers=3, errors=errors) == [1.0]
    assert seen == [(2.0, 3, errors)] and seen[0][2] is errors
    assert verifiers.score_batch("old", ["a"], [""], timeout_s=2.0, workers=3, errors=errors) == [0.5]


def test_code_batch_runs_on_the_number_of_jails_asked_for(monkeypatch):
    import sandbox
    from verifiers import code as codev

    pools = []
    real = sandbox.run_batch

    def spy(requests, *, pool=None):
        pools.append(pool)
        return real(requests, pool=pool)

    monkeypatch.setattr(sandbox, "run_batch", spy)
    meta = {"test_list": ["assert sq(3) == 9"]}
    comps = ["def sq(x):\n    return x * x\n", "def sq(x):\n    return x\n"]
    assert verifiers.score_batch("code", comps, ["", ""], [meta, meta], timeout_s=5.0, workers=3) == [1.0, 0.0]
    assert pools[-1] is not None and pools[-1].workers == 3
    assert codev.score_batch(comps[:1], [""], [meta], workers=3) == [1.0] and pools[-1] is pools[-2]  # kept
    assert verifiers.score_batch("code", comps[:1], [""], [meta], workers=0) == [1.0]
    assert pools[-1] is None  # 0 or None: the sandbox's default pool, two jails per core
