"""RL and evaluation with an environment (recipe ``env``): a run of the tiny model whose episodes get a user's
environment's observations trains on the episodes with those tokens masked out and the environment's rewards
in, logs env/* and evaluates episodes; ``rlvr.evaluate --env.name`` gives pass@k and maj@k of episodes and
records their turns and tool calls. (Exact resume with the Python tool: tests/test_resume.py.)

    python -m pytest tests/test_rl_env.py        # ~30 s on 2 CPU cores
"""

import json
import re
from pathlib import Path

import pytest
from conftest import TINY_DATA, TINY_MODEL

from rlvr import evaluate as ev, rl
from rlvr.log import read_records

# Ends a model turn at "<" (the tiny model opens "<think>" early) and answers with the problem's answer, worth
# ``bonus``, twice; then the episode ends. Its observation is the only text matching /-?\d+>.
HINT = """from rlvr.episodes import Stop, Turn

class Hint:
    stop = Stop("<")

    def __init__(self, problem, bonus=0.0):
        self.answer, self.bonus, self.turns = problem.answer, bonus, 0

    def step(self, text):
        self.turns += 1
        return Turn(f"/{self.answer}>", reward=self.bonus) if self.turns < 3 else None
"""


def hint_env(tmp_path: Path) -> str:
    """The ``env.name`` of a user's environment in a file of its own."""
    (tmp_path / "hint_env.py").write_text(HINT)
    return f"{tmp_path / 'hint_env.py'}:Hint"


def observation_runs(completion: list[int], mask: list[float]) -> list[list[int]]:
    """The maximal runs of a completion's tokens with loss mask 0."""
    runs, cur = [], []
    for t, m in zip(completion, mask):
        if m == 0:
            cur.append(t)
        elif cur:
            runs, cur = runs + [cur], []
    return runs + ([cur] if cur else [])


def test_an_rl_run_with_a_users_environment_learns_from_episodes_with_observations_masked(
    tiny_cfg, tmp_path, monkeypatch
):
    batches, learn = [], rl.learn

    def spy(learner, ref_model, batch, *args, **kw):  # the batch the learner gets
        batches.append(batch)
        return learn(learner, ref_model, batch, *args, **kw)

    monkeypatch.setattr(rl, "learn", spy)
    cfg = tiny_cfg(
        {
            "env.name": hint_env(tmp_path),
            "env.options": "{bonus: 0.25}",
            "rewards": "[{verifier: math, weight: 0.0}]",  # the environment's reward alone: checked exactly below
            "eval.problems": 4,
        }
    )
    summary = rl.train(cfg)
    out = Path(cfg.output_dir)
    rows = read_records(out / "metrics.jsonl")
    tok = __import__("transformers").AutoTokenizer.from_pretrained(TINY_MODEL)
    assert len(batches) == len(rows) == 2
    for batch, row in zip(batches, rows):
        ro, mask, old = batch.rollout, batch.token_mask(), batch.sampler_logprobs()
        runs = [observation_runs(c, mask[r, : len(c)].tolist()) for r, c in enumerate(ro.completion_ids)]
        for r, obs in enumerate(runs):
            # every masked token is an observation, encoded on its own, with log-prob 0 ...
            assert all(
                re.fullmatch(r"/-?\d+>", tok.decode(o)) and tok.encode(tok.decode(o), add_special_tokens=False) == o
                for o in obs
            )
            assert old[r, : len(ro.completion_ids[r])][mask[r, : len(ro.completion_ids[r])] == 0].eq(0).all()
            # ... and the sampled tokens all count (an observation is never in a model turn's text)
            assert len(re.findall(r"/-?\d+>", ro.texts[r])) == len(obs)
            # the reward is the environment's: 0.25 a call (a last one that did not fit ends the episode)
            assert 0.25 * len(obs) <= batch.rewards[r].item() <= 0.25 * (len(obs) + ro.truncated[r])
        calls = [len(o) for o in runs]
        assert sum(calls) > len(calls) // 2 and row["env/turns"] > 1.5 and row["env/failures"] == 0
        assert row["env/tool_calls"] >= sum(calls) / len(calls) and row["env/tool_call_frac"] > 0.5
    # the curves have a fourth panel, the episodes' turns and tool calls (5 inches a panel at 110 dpi)
    assert int.from_bytes((out / "curves.png").read_bytes()[16:20], "big") == 4 * 5 * 110
    # the held-out greedy evaluation ran episodes too
    assert {"turns", "tool_calls", "tool_call_frac"} <= set(summary["eval_final"])
    samples = read_records(out / "eval_final_samples.jsonl")
    assert len(samples) == 4 and all(s["tool_calls"] == s["completion"].count(f"/{s['answer']}>") for s in samples)
    assert summary["eval_final"]["tool_calls"] == pytest.approx(sum(s["tool_calls"] for s in samples) / 4)


def test_evaluate_with_an_environment_scores_episodes_and_records_their_turns(tmp_path, capsys):
    args = ["--model", str(TINY_MODEL), "--dataset", str(TINY_DATA / "test.jsonl"), "--limit", "4", "--n", "2"]
    args += ["--k", "1,2", "--max_new_tokens", "48", "--cpu_threads", "1", "--plots", "false"]
    env = ["--env.name", hint_env(tmp_path), "--env.options", "{bonus: 0.5}", "--env.max_turns", "2"]
    assert ev.main([*args, *env, "--output_dir", str(tmp_path / "with")]) == 0
    summary = json.loads((tmp_path / "with" / "summary.json").read_text())
    records = read_records(tmp_path / "with" / "samples.jsonl")
    assert len(records) == 4 * 3 and {"pass@1", "pass@2", "maj@2", "greedy_accuracy"} <= set(summary)
    answers = {json.loads(line)["question"]: json.loads(line)["answer"] for line in open(TINY_DATA / "test.jsonl")}
    for r in records:
        shown = r["completion"].count(f"/{answers[re.search(r'User: (.*) Assistant:', r['prompt']).group(1)]}>")
        assert r["turns"] <= 2 and r["tool_calls"] == shown and r["env_failed"] is False
        if r["verdict"] != "error":  # the episode's reward: the verifier's and 0.5 a call
            assert r["reward"] == (r["verdict"] == "correct") + 0.5 * r["tool_calls"]
    sampled = [r for r in records if r["sample"] != "greedy"]
    assert summary["tool_calls"] == pytest.approx(sum(r["tool_calls"] for r in sampled) / 8) and summary["turns"] > 1
    assert "tool_calls" in capsys.readouterr().out  # in the table
    # A bad option is an error naming the flag, before any model loads.
    assert ev.main([*args, *env[:2], "--env.options", "{bonsu: 1}", "--output_dir", str(tmp_path / "bad")]) == 1
    assert "--env.options: env.options: environment" in capsys.readouterr().err
