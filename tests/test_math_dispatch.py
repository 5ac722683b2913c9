"""How verifiers.math hands work to the pool: explicitly, by the spec of ``judge_pair``, never by re-entry."""

from __future__ import annotations

import verifiers
from verifiers import math as vm, pool

SLOW = (r"\boxed{(x+1)^2}", "x^2+2x+1")  # no cheap verdict: this pair goes to the pool
JUDGE_SPEC = "verifiers.math:judge_pair"


def test_batch_entry_is_registered_and_sends_the_extracted_pair_to_judge_pair(monkeypatch):
    calls = []

    def fake_run_isolated(spec, completions, answers, metas=None, **kw):
        calls.append((spec, list(completions), list(answers), list(metas), kw))
        return [1.0] * len(completions)

    monkeypatch.setattr(vm._pool, "run_isolated", fake_run_isolated)
    verifiers.get("math")
    assert verifiers._BATCH["math"] is vm.math_batch
    got = vm.math_batch([SLOW[0], "#### 7"], [SLOW[1], "8"], [{}, {}], timeout_s=2.0, workers=3)
    assert got == [1.0, 0.0]
    assert len(calls) == 1
    spec, preds, golds, metas, kw = calls[0]
    assert spec == JUDGE_SPEC
    assert preds == ["(x+1)^2"] and golds == ["x^2+2x+1"]  # extracted here, not in the worker
    assert metas == [{}]
    assert kw["workers"] == 3 and kw["timeout_s"] == 2.0


def test_per_sample_path_uses_judge_pair_too(monkeypatch):
    specs = []

    def fake_run_isolated(spec, completions, answers, metas=None, **kw):
        specs.append(spec)
        return [0.0] * len(completions)

    monkeypatch.setattr(vm._pool, "run_isolated", fake_run_isolated)
    assert vm.math_reward(*SLOW) == 0.0  # the fake pool's verdict, so the pool was asked
    assert vm.verify(*SLOW) is False
    assert specs == [JUDGE_SPEC, JUDGE_SPEC]


def test_warm_up_loads_the_judge_spec(monkeypatch):
    warmed = []
    monkeypatch.setattr(pool.Pool, "warm", lambda self, n=None, spec=None: warmed.append((n, spec)))
    vm.warm_up(2)
    assert warmed == [(2, JUDGE_SPEC)]


def test_judge_pair_judges_a_pair_not_a_response():
    assert vm.judge_pair("(x+1)^2", "x^2+2x+1") == 1.0
    assert vm.judge_pair("(x-1)^2", "x^2+2x+1") == 0.0
    assert vm.judge_pair("The answer is 2.", "2") == 0.0  # no extraction on the worker side


def test_pool_resolves_the_judge_spec():
    got = pool.run_isolated(
        JUDGE_SPEC, ["(x+1)^2", "x"], ["x^2+2x+1", "x+1"], timeout_s=20.0, memory_mb=vm.WORKER_MEMORY_MB
    )
    assert got == [1.0, 0.0]


def test_score_batch_math_end_to_end():
    got = verifiers.score_batch(
        "math", [SLOW[0], r"\boxed{(x-1)^2}", "#### 18"], [SLOW[1], SLOW[1], "18"], timeout_s=5.0
    )
    assert got == [1.0, 0.0, 1.0]


def test_verify_called_from_a_user_verifier_inside_a_pool_worker(tmp_path):
    # a worker cannot start workers of its own: verify must still judge the slow pair there
    user = tmp_path / "rewards.py"
    user.write_text(
        "from verifiers.math import verify\n"
        "def combined(completion, answer, **meta):\n"
        "    return 1.0 if verify(completion, answer) else 0.0\n"
    )
    got = pool.run_isolated(f"{user}:combined", [SLOW[0], r"\boxed{(x-1)^2}"], [SLOW[1], SLOW[1]], timeout_s=20.0)
    assert got == [1.0, 0.0]
