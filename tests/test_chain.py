"""The post-training chain: an SFT checkpoint starts a GRPO run, whose checkpoint starts a DPO run."""

import json
from pathlib import Path

from rlvr.train import run

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "rlvr" / "tiny" / "data"


def head(src: Path, dst: Path, n: int) -> str:
    dst.write_text("".join(src.open().readlines()[:n]))
    return str(dst)


def test_sft_then_grpo_then_dpo(tmp_path):
    chats = head(DATA / "sft_test.jsonl", tmp_path / "chats.jsonl", 8)
    run("recipes/tiny_sft.yaml", output_dir=str(tmp_path / "sft"), **{
        "data.train": chats, "data.test": "", "sft.steps": 2, "sft.seqs_per_step": 4, "sft.micro_batch_seqs": 4})

    # GRPO renders prompts with the chat template the SFT checkpoint carries.
    problems = head(DATA / "test.jsonl", tmp_path / "problems.jsonl", 8)
    g = run("recipes/tiny_zero.yaml", output_dir=str(tmp_path / "grpo"), **{
        "model.path": str(tmp_path / "sft" / "final"), "data.template": "chat", "data.train": problems,
        "data.test": problems, "grpo.steps": 1, "grpo.prompts_per_step": 2, "grpo.samples_per_prompt": 2,
        "grpo.micro_batch_seqs": 4, "eval.problems": 2, "sampler.max_new_tokens": 8})
    assert g["steps"] == 1
    samples = [json.loads(line) for line in (tmp_path / "grpo" / "eval_final_samples.jsonl").open()]
    assert len(samples) == 2

    pairs = head(DATA / "prefs_test.jsonl", tmp_path / "pairs.jsonl", 4)
    d = run("recipes/tiny_dpo.yaml", output_dir=str(tmp_path / "dpo"), **{
        "model.path": str(tmp_path / "grpo" / "final"), "data.template": "chat", "data.train": pairs,
        "data.test": pairs, "dpo.steps": 1, "dpo.pairs_per_step": 4, "dpo.micro_batch_pairs": 4})
    assert d["eval_initial"]["preference_accuracy"] == 0.5 and (tmp_path / "dpo" / "final" / "config.json").is_file()
