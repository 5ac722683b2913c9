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
        got = pool.run_isolated({str(user_file) + ':hang'!r}, ["hang", "x"], ["", ""], timeout_s=1.0)
        assert got == [None, 1.0], got
        probe = {str(user_file.parent / 'probe.py')!r}
        open(probe, "w").write("import sys\\ndef f(c, a, **m):\\n    return float('torch' in sys.modules)\\n")
        assert pool.run_isolated(probe + ":f", ["a"], ["a"]) == [0.0]
        print("ok", round(time.monotonic() - t, 2))
        """
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
