"""The post-training chain: an SFT checkpoint starts a GRPO run, whose checkpoint starts a DPO run."""

from pathlib import Path

from conftest import REPO, TINY_MODEL

from rlvr.log import read_records
from rlvr.tiny.chat_data import CHAT_TEMPLATE
from rlvr.train import run

DATA = REPO / "rlvr" / "tiny" / "data"


def head(src: Path, dst: Path, n: int) -> str:
    dst.write_text("".join(src.open().readlines()[:n]))
    return str(dst)


def test_sft_then_grpo_then_dpo(tmp_path):
    chats = head(DATA / "sft_test.jsonl", tmp_path / "chats.jsonl", 8)
    run(
        "recipes/tiny_sft.yaml",
        output_dir=str(tmp_path / "sft"),
        **{"data.train": chats, "data.test": "", "sft.steps": 2, "sft.seqs_per_step": 4, "sft.micro_batch_seqs": 4},
    )

    # GRPO renders prompts with the chat template the SFT checkpoint carries.
    problems = head(DATA / "test.jsonl", tmp_path / "problems.jsonl", 8)
    g = run(
        "recipes/tiny_zero.yaml",
        output_dir=str(tmp_path / "grpo"),
        **{
            "model.path": str(tmp_path / "sft" / "final"),
            "data.template": "chat",
            "data.train": problems,
            "data.test": problems,
            "rl.steps": 1,
            "rl.prompts_per_step": 2,
            "rl.samples_per_prompt": 2,
            "rl.micro_batch_seqs": 4,
            "eval.problems": 2,
            "sampler.max_new_tokens": 8,
        },
    )
    # the RL run went on from the SFT weights (not the base model's), and its checkpoint carries SFT's template
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def weights(path):
        return AutoModelForCausalLM.from_pretrained(path).state_dict()

    def moved(a, b):
        return sum((a[k] - b[k]).norm() for k in a)

    sft_w, base_w, grpo_w = (weights(p) for p in (tmp_path / "sft" / "final", TINY_MODEL, tmp_path / "grpo" / "final"))
    assert moved(grpo_w, sft_w) < moved(sft_w, base_w) and moved(sft_w, base_w) > 0
    assert AutoTokenizer.from_pretrained(tmp_path / "grpo" / "final").chat_template == CHAT_TEMPLATE
    assert len(read_records(tmp_path / "grpo" / "eval_final_samples.jsonl")) == g["eval_final"]["n"] == 2

    pairs = head(DATA / "prefs_test.jsonl", tmp_path / "pairs.jsonl", 4)
    d = run(
        "recipes/tiny_dpo.yaml",
        output_dir=str(tmp_path / "dpo"),
        **{
            "model.path": str(tmp_path / "grpo" / "final"),
            "data.template": "chat",
            "data.train": pairs,
            "data.test": pairs,
            "dpo.steps": 1,
            "dpo.pairs_per_step": 4,
            "dpo.micro_batch_pairs": 4,
        },
    )
    assert d["eval_initial"]["preference_accuracy"] == 0.5 and (tmp_path / "dpo" / "final" / "config.json").is_file()
