"""Reward model: a short Bradley-Terry run, HF save/load round trip, and the `reward_model` verifier."""

import json

import pytest
import torch
from conftest import REPO

from rlvr import reward_model, rewards
from rlvr.config import ConfigError, load_config
from rlvr.data import Problem
from rlvr.model import load_scorer

PREFS = REPO / "rlvr" / "tiny" / "data" / "prefs_test.jsonl"


def test_rm_trains_saves_loads_and_scores_as_a_verifier(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlvr.train import run

    rows = [json.loads(line) for line in PREFS.open()][:16]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = run(
        "recipes/tiny_reward_model.yaml",
        output_dir=str(tmp_path / "rm"),
        **{
            "data.train": str(f),
            "data.test": str(f),
            "reward_model.steps": 3,
            "reward_model.pairs_per_step": 8,
            "reward_model.micro_batch_pairs": 4,
        },
    )
    assert 0 <= s["eval_final"]["pairwise_accuracy"] <= 1 and s["eval_final"]["margin"] > s["eval_initial"]["margin"]
    final = tmp_path / "rm" / "final"
    assert AutoModelForSequenceClassification.from_pretrained(final).config.num_labels == 1

    cfg = load_config(None, {"reward_model.scorer": str(final), "rewards": [{"verifier": "reward_model"}]})
    reward_model.register_verifier(cfg.reward_model)
    prompt = "User: What is 1 + 2? Assistant:"
    texts = [rows[0]["chosen"], rows[0]["rejected"]]
    total, metrics, raw = rewards.score(cfg.rewards, [prompt, prompt], texts, [Problem("q", "3")] * 2, timeout_s=1.0)
    m, tok = load_scorer(str(final))
    with torch.no_grad():
        direct = reward_model.scores(m.eval(), tok, [prompt + t for t in texts], 2)
    # saved and reloaded, the same texts in one batch of 2: the same computation, so the same scores bit for bit
    assert torch.equal(raw["reward_model"], direct)
    assert metrics["verifier/reward_model_failures"] == 0.0

    # The chat-RL recipe on it: the reward-model verifier beside math, and a KL to the base model.
    data = str(REPO / "rlvr" / "tiny" / "data" / "test.jsonl")
    g = run(
        "recipes/tiny_chat_rl.yaml",
        output_dir=str(tmp_path / "rl"),
        **{
            "reward_model.scorer": str(final),
            "data.train": data,
            "data.test": data,
            "rl.steps": 1,
            "rl.prompts_per_step": 2,
            "rl.samples_per_prompt": 4,
            "rl.micro_batch_seqs": 8,
            "eval.problems": 4,
        },
    )
    step = json.loads((tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()[0])
    assert step["kl"] >= 0 and step["grad_norm"] > 0 and "reward/reward_model" in step
    assert {"initial", "final"} <= set(g["reward_model_score"])

    # InstructGPT's stage 3 on it (recipes/tiny_ppo.yaml): PPO, its critic started from the reward model
    p = run(
        "recipes/tiny_ppo.yaml",
        output_dir=str(tmp_path / "ppo"),
        **{
            "reward_model.scorer": str(final),
            "rl.critic.path": str(final),
            "data.train": data,
            "data.test": data,
            "rl.steps": 1,
            "rl.prompts_per_step": 2,
            "rl.samples_per_prompt": 4,
            "rl.micro_batch_seqs": 8,
            "eval.problems": 4,
        },
    )
    step = json.loads((tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()[0])
    # the first step samples with the starting policy, the reference itself: its k1 KL is rounding only
    assert abs(step["kl"]) < 1e-5 and step["value/loss"] > 0 and step["grad_norm"] > 0 and "critic/lr" in step
    critic = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ppo" / "final_critic").state_dict()
    rm = AutoModelForSequenceClassification.from_pretrained(final).state_dict()
    assert any(not torch.equal(critic[k], rm[k]) for k in rm) and critic.keys() == rm.keys()  # it learnt from it
    assert {"initial", "final"} <= set(p["reward_model_score"])


def test_reward_model_verifier_needs_a_scorer():
    with pytest.raises(ConfigError, match="reward_model.scorer is empty"):
        load_config("recipes/tiny_zero.yaml", {"rewards": [{"verifier": "reward_model"}]})
