"""Rejection sampling: the keep rules against hand-computed cases, which samples may compete (require_correct,
truncation), kept.jsonl read by the SFT loader as is, a tiny run that learns, and resume (mid-round and at a round's
start) equal to an uninterrupted run without sampling again."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, TINY_DATA, TINY_MODEL

from rlvr import algos, data as data_lib, model as model_lib, rejection_sampling as rs
from rlvr.config import ConfigError, load_config
from rlvr.rollout import Rollout
from rlvr.supervised import heldout_loss

RECIPE = REPO / "recipes" / "tiny_rejection_sampling.yaml"
# A run of seconds: 2 rounds of 8 problems x 4 samples, 2 SFT steps each, greedy accuracy on 8 held-out problems.
TINY = {
    "model.path": str(TINY_MODEL),
    "data.train": str(TINY_DATA / "train.jsonl"),
    "data.test": str(TINY_DATA / "test.jsonl"),
    "rejection_sampling.rounds": 2,
    "rejection_sampling.prompts_per_round": 8,
    "rejection_sampling.samples_per_prompt": 4,
    "rejection_sampling.steps_per_round": 2,
    "rejection_sampling.seqs_per_step": 4,
    "rejection_sampling.micro_batch_seqs": 4,
    "eval.problems": 8,
    "cpu_threads": 1,
}


def test_keep_rules_hand_computed():
    r = torch.tensor([[0.0, 2.0, 1.0, 2.0], [1.0, 0.5, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    ok = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    keep = {name: fn(r, ok, k=2, threshold=1.0).int().tolist() for name, fn in algos.KEEP_RULES.items()}
    # best: the highest eligible reward, the earlier of a tie (row 0: samples 1 and 3); row 1's 3.0 is not eligible;
    # row 2 has nothing eligible
    assert keep["best"] == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # top 2: row 0 keeps both 2.0s; row 1 its two best eligible ones (1.0, 0.5)
    assert keep["top_k"] == [[0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]]
    # threshold 1.0: every eligible reward >= 1
    assert keep["threshold"] == [[0, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]]
    # ties beyond k: the earlier samples win
    assert algos.keep_top_k(torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool), k=3).int().tolist() == [[1, 1, 1, 0]]


class FixedSampler:
    """Returns the same completions for every prompt, the last one cut by max_new_tokens."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, n, **kw):
        assert n == len(self.texts)
        rows = [(p, i) for p in prompts for i in range(n)]
        return Rollout(
            [p for p, _ in rows],
            [[100 + i] for _, i in rows],
            [self.texts[i] for _, i in rows],
            [[0.0] for _ in rows],
            [i == n - 1 for _, i in rows],
        )


def test_require_correct_and_truncation_decide_which_samples_compete():
    texts = [
        "<think> 2 + 3 = 5 </think> <answer> 5 </answer>",  # right, in format: math 1 + format 1
        "<think> 2 + 3 = 6 </think> <answer> 6 </answer>",  # wrong, in format: 0 + 1
        "The answer is 5",  # right, no format: 1 + 0
        "<think> 2 + 3 = 5 </think> <answer> 5 </answer>",  # right and formatted, but truncated
    ]
    problems = [data_lib.Problem("What is 2 + 3?", "5", {}, "p0")]
    train_set = data_lib.PromptSet(problems, [[1, 2, 3]], ["What is 2 + 3?"])

    def kept(**over):
        over = {f"rejection_sampling.{k}": v for k, v in {"samples_per_prompt": 4, **over}.items()}
        cfg = load_config(RECIPE, {**TINY, **over})
        rows, sums = rs.sample_and_select(cfg, FixedSampler(texts), train_set, [0], 1)
        return [row["sample"] for row in rows], sums

    assert kept(keep="threshold", threshold=1.0)[0] == [0, 2]  # 1 is wrong, 3 truncated
    assert kept(keep="threshold", threshold=1.0, require_correct="")[0] == [0, 1, 2]
    assert kept(keep="best")[0] == [0]
    assert kept(keep="top_k", top_k=3)[0] == [0, 2]
    rows, sums = kept(keep="best", require_correct="")
    assert rows == [0] and sums["kept"] == 1 and sums["truncated"] == 1 and sums["correct"] == 3
    assert sums["reward_sum"] == 2 + 1 + 1 + 2 and sums["kept_reward_sum"] == 2


def test_config_errors_name_the_key():
    cases = [
        ({"rejection_sampling.require_correct": "code"}, "require_correct='code' is not one of the rewards'"),
        ({"rejection_sampling.keep": "top_k", "rejection_sampling.top_k": 9}, "top_k=9 keeps more than"),
        ({"rejection_sampling.rounds": 0}, "rejection_sampling.rounds must be at least 1"),
        ({"rejection_sampling.seqs_per_step": 6}, "seqs_per_step=6 is not a multiple of"),
        ({"env.name": "python"}, "rejection sampling samples single-turn completions"),
        ({"rejection_sampling.keep": "worst"}, "'rejection_sampling.keep' is 'worst'; choose one of best"),
        ({"rejection_sampling.samples": 4}, "unknown key 'rejection_sampling.samples'"),
    ]
    for over, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(RECIPE, {**TINY, **over})


# Enough to learn in ~10 s: 2 rounds of 16 problems x 8 samples, 3 steps of 16 kept samples; 20 held-out problems.
LEARN = {
    **TINY,
    "rejection_sampling.prompts_per_round": 16,
    "rejection_sampling.samples_per_prompt": 8,
    "rejection_sampling.steps_per_round": 3,
    "rejection_sampling.seqs_per_step": 16,
    "rejection_sampling.micro_batch_seqs": 16,
    "eval.problems": 20,
}


def test_a_tiny_run_learns_and_its_kept_samples_read_as_sft_data(tmp_path):
    out = tmp_path / "run"
    cfg = load_config(RECIPE, {**LEARN, "output_dir": str(out)})
    summary = rs.train(cfg)
    base, tok = model_lib.load(cfg.model)
    trained = model_lib.load(dataclasses.replace(cfg.model, path=str(out / "final")))[0]
    kept = [row for _, row in data_lib.read_jsonl(out / "round_1" / "kept.jsonl")]
    assert 0 < len(kept) <= 16 and all(row["reward"] >= 1.0 for row in kept)  # right (math), one a problem at most
    # stage sft, with the same data settings, reads the file as is: the same prompts, token for token
    convs = data_lib.load_conversations(str(out / "round_1" / "kept.jsonl"), "train", cfg.data)
    examples = data_lib.encode_chats(convs, tok, cfg.data)
    for row, conv, (ids, mask, start) in zip(kept, convs, examples, strict=True):
        assert conv.messages[-1]["content"] == row["response"]
        assert ids[:start] == row["prompt_ids"] and tok.decode(ids[start:]) == tok.decode(row["completion_ids"])
        assert mask[:start] == [0.0] * start and mask[start:] == [1.0] * (len(ids) - start)
    # the SFT steps made the kept samples likelier, and held-out greedy accuracy (right, in format) rose
    rows = rs.training_rows(kept, cfg, 1)
    before, after = (heldout_loss(m, rows, tok.pad_token_id, 8) for m in (base, trained))
    assert after < 0.8 * before, (before, after)  # measured: 0.053 -> 0.034 nats per token
    acc = [summary["eval_initial"]["accuracy"]] + [
        r["round/accuracy"] for r in map(json.loads, (out / "metrics.jsonl").open()) if "round/accuracy" in r
    ]
    assert len(acc) == 3 and acc[2] >= acc[0] + 0.3, acc  # measured: 0.35 -> 0.8 (20 problems)
    assert summary["eval_final"]["accuracy"] == acc[2]


def cli(out, crash_at: str) -> subprocess.CompletedProcess:
    over = {**TINY, "output_dir": str(out), "checkpoint_every": 1, "keep_last": 0, "resume": "auto"}
    return subprocess.run(
        [sys.executable, "-m", "rlvr.train", str(RECIPE), *[f"--{k}={v}" for k, v in over.items()]],
        cwd=REPO,
        env={**os.environ, "RLVR_CRASH_AT": crash_at, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def metrics(out) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith("perf/")} for line in open(out / "metrics.jsonl")
    ]


def test_resume_mid_round_and_at_a_round_start_equals_an_uninterrupted_run(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    rs.train(load_config(RECIPE, {**TINY, "output_dir": str(ref)}))
    killed = cli(out, "step2")  # round 1's second step: its samples on disk, step 1 checkpointed
    assert killed.returncode == -9, killed.stderr[-2000:]
    first = (out / "round_1" / "kept.jsonl").stat()
    killed = cli(out, "step3")  # resumed mid-round 1, then killed in round 2's first step, after it sampled
    assert killed.returncode == -9, killed.stderr[-2000:]
    second = (out / "round_2" / "kept.jsonl").stat()
    over = {**TINY, "output_dir": str(out), "checkpoint_every": 1, "resume": "auto"}
    rs.train(load_config(RECIPE, over))  # resumes at round 2's start, from step 2's checkpoint
    # no round was sampled again: both files are the ones first written
    for before, path in ((first, "round_1"), (second, "round_2")):
        now = (out / path / "kept.jsonl").stat()
        assert (now.st_ino, now.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), path
    assert metrics(out) == metrics(ref) and [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    assert all(r["grad_norm"] > 0 for r in metrics(ref))
    weights = "final/model.safetensors"
    assert (out / weights).read_bytes() == (ref / weights).read_bytes()
