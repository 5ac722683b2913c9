"""Custom reward functions from the user's own file: a plain verifier and a TRL-style batch function."""

import json
import textwrap

import pytest

from rlvr.config import RewardSpec
from rlvr.data import Problem
from rlvr.rewards import is_batch_function, score
from rlvr.rl import train

USER_FILE = textwrap.dedent("""
    def short(completion, answer, **meta):
        return 1.0 if len(completion) < 30 else 0.0

    def echo_answer(prompts, completions, answer, **columns):
        # TRL-style: lists in, one reward per completion out
        return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

    def hangs(completion, answer, **meta):
        while True:
            pass

    def raises(completion, answer, **meta):
        raise RuntimeError("bug in a user verifier")

    def batch_raises(prompts, completions, **columns):
        return [1.0 / 0 for c in completions]
""")


@pytest.fixture
def user_file(tmp_path):
    p = tmp_path / "my_rewards.py"
    p.write_text(USER_FILE)
    return p


def test_score_mixes_plain_and_batch_functions_with_weights(user_file):
    probs = [Problem("q", "42"), Problem("q", "7")]
    completions = ["the answer is 42", "a much longer completion that says 8 at the end"]
    specs = [
        RewardSpec(f"{user_file}:short", 2.0),
        RewardSpec(f"{user_file}:echo_answer", 1.0),
        RewardSpec("format", 1.0),
    ]
    total, metrics, raw = score(specs, ["p", "p"], completions, probs, timeout_s=5.0)
    assert raw["short"].tolist() == [1.0, 0.0] and raw["echo_answer"].tolist() == [1.0, 0.0]
    assert total.tolist() == [3.0, 0.0]
    assert metrics["reward/short"] == 0.5 and metrics["verifier/short_failures"] == 0


def test_hanging_or_raising_verifier_scores_zero_and_is_counted(user_file):
    probs = [Problem("q", "1")] * 2
    for name in ("hangs", "raises"):
        total, metrics, _ = score([RewardSpec(f"{user_file}:{name}", 1.0)], ["p"] * 2, ["x", "y"], probs, timeout_s=0.5)
        assert total.tolist() == [0.0, 0.0]
        assert metrics[f"verifier/{name}_failures"] == 2.0


def test_the_first_failure_of_each_verifier_is_printed_once_with_its_traceback(user_file, capsys, monkeypatch):
    from rlvr import rewards

    monkeypatch.setattr(rewards, "_REPORTED", set())
    probs = [Problem("q", "1")] * 2
    for _ in range(2):  # a second step prints nothing new
        for name in ("raises", "batch_raises", "short"):
            _, metrics, _ = score([RewardSpec(f"{user_file}:{name}", 1.0)], ["p"] * 2, ["x", "y"], probs, timeout_s=5.0)
            assert metrics[f"verifier/{name}_failures"] == (0.0 if name == "short" else 2.0)
    err = capsys.readouterr().err
    assert err.count("verifier 'raises' failed") == 1 and err.count("verifier 'batch_raises' failed") == 1
    assert "RuntimeError: bug in a user verifier" in err and "ZeroDivisionError" in err
    assert 'my_rewards.py", line' in err  # the user's own file and line, from the worker's traceback
    assert "'short'" not in err


def test_batch_function_detection():
    assert is_batch_function(lambda prompts, completions, **kw: [])
    assert not is_batch_function(lambda completion, answer, **meta: 0.0)


def test_a_recipe_trains_with_functions_from_the_users_file(user_file, tiny_overrides, tiny_cfg):
    rewards = f"[{{verifier: '{user_file}:short', weight: 1.0}}, {{verifier: '{user_file}:echo_answer', weight: 0.5}}]"
    cfg = tiny_cfg({"rl.steps": 1, "rewards": rewards})
    train(cfg)
    row = json.loads(open(f"{cfg.output_dir}/metrics.jsonl").readline())
    assert "reward/short" in row and "reward/echo_answer" in row
    assert row["verifier/short_failures"] == 0 and row["verifier/echo_answer_failures"] == 0
    # echo_answer is a real signal here: the tiny model does write the right number sometimes
    assert 0.0 < row["reward/echo_answer"] < 1.0
