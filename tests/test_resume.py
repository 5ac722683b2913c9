"""Exact resume: a CPU GRPO run SIGKILLed mid-step (or mid-checkpoint-write) and resumed equals the
uninterrupted run bit for bit (metrics except wall-clock ``perf/*``, and final weights); plus the
checkpoint mechanics (validity, newest-valid, retention, resume errors, failed writes).

    pytest tests/test_resume.py          # about a minute on a busy 2-core box

The kills use ``RLVR_CRASH_AT`` (rlvr.checkpoint.crash_point): the process SIGKILLs itself at a named
point, so the test hits the middle of a step or of a checkpoint write every time, not by timing luck.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_DATA, TINY_MODEL

from rlvr import checkpoint as ckpt, train as train_cli
from rlvr.config import load_config
from rlvr.rl import train
from rlvr.run import prepare_resume

RECIPE = REPO / "recipes" / "tiny_zero.yaml"
# 4 steps of 2 prompts x 4 samples: about 1 s a step on one thread; most of a run is start-up. 48 new
# tokens let the tiny model finish answers, so rewards differ within groups and every step really trains
# (at 16 all rewards are 0, the weights never move, and a resume would match even with the optimizer lost).
TINY = {
    "model.path": str(TINY_MODEL),
    "data.train": str(TINY_DATA / "train.jsonl"),
    "data.test": str(TINY_DATA / "test.jsonl"),
    "rl.steps": 4,
    "rl.prompts_per_step": 2,
    "rl.samples_per_prompt": 4,
    "rl.micro_batch_seqs": 8,
    "sampler.max_new_tokens": 48,
    "eval.problems": 2,
    "checkpoint_every": 1,
    "keep_last": 0,
    "cpu_threads": 1,
}


def cli(out: Path, *extra: str, crash_at: str = "", recipe: Path = RECIPE) -> subprocess.CompletedProcess:
    args = [f"--{k}={v}" for k, v in {**TINY, "output_dir": str(out)}.items()] + list(extra)
    env = {**os.environ, "RLVR_CRASH_AT": crash_at, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rlvr.train", str(recipe), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    train(load_config(RECIPE, {**TINY, "output_dir": str(out)}))
    return out


def assert_same_run(out: Path, ref: Path) -> None:
    assert metrics(out) == metrics(ref)
    assert all(r["grad_norm"] > 0 for r in metrics(ref)[:3]), "the steps around the kill must update the weights"
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    assert (out / "final" / "model.safetensors").read_bytes() == (ref / "final" / "model.safetensors").read_bytes()


def test_sigkill_mid_step_then_resume_equals_uninterrupted_run(uninterrupted, tmp_path):
    out = tmp_path / "run"
    killed = cli(out, crash_at="step3")  # weights already updated by step 3, its metrics not yet logged
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert [r["step"] for r in metrics(out)] == [1, 2]
    assert ckpt.find_latest(out / "checkpoints").name == "step_2"
    train(load_config(RECIPE, {**TINY, "output_dir": str(out), "resume": "auto"}))
    assert_same_run(out, uninterrupted)


def test_ppo_with_its_critic_resumes_after_sigkill_bit_for_bit(tmp_path):
    """PPO (rl.advantage: gae): the checkpoint holds the critic's weights and optimizer too, so a run killed
    mid-step and resumed ends with the uninterrupted run's metrics and both models' weights, bit for bit."""
    ppo = {"rl.advantage": "gae", "rl.critic.lr": 1e-3}
    ref, out = tmp_path / "ref", tmp_path / "run"
    train(load_config(RECIPE, {**TINY, **ppo, "output_dir": str(ref)}))
    killed = cli(out, *[f"--{k}={v}" for k, v in ppo.items()], crash_at="step3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoints" / "step_2" / "critic" / "model.safetensors").is_file()
    train(load_config(RECIPE, {**TINY, **ppo, "output_dir": str(out), "resume": "auto"}))
    assert_same_run(out, ref)
    assert all(r["value/loss"] > 0 for r in metrics(ref))
    critic = "final_critic/model.safetensors"
    assert (out / critic).read_bytes() == (ref / critic).read_bytes()


def test_episodes_with_the_python_tool_resume_after_sigkill_bit_for_bit(tmp_path):
    """The tool demo (recipes/tiny_tool.yaml: the python environment, its sandbox runs' output in the episodes,
    masked) killed mid-step and resumed equals the uninterrupted run, metrics and weights."""
    tool = {
        "model.path": str(TINY_MODEL.parent / "tool_model"),
        "data.train": str(TINY_DATA / "tool_train.jsonl"),
        "data.test": str(TINY_DATA / "tool_test.jsonl"),
        "sampler.max_new_tokens": 96,  # a call, its output and the answer
        "eval.every_steps": 0,
        "env.options": "{timeout_s: 30}",  # far from any run's time: a timeout would be a different observation
    }
    recipe, ref, out = REPO / "recipes" / "tiny_tool.yaml", tmp_path / "ref", tmp_path / "run"
    train(load_config(recipe, {**TINY, **tool, "output_dir": str(ref)}))
    killed = cli(out, *[f"--{k}={v}" for k, v in tool.items()], crash_at="step3", recipe=recipe)
    assert killed.returncode == -9, killed.stderr[-2000:]
    train(load_config(recipe, {**TINY, **tool, "output_dir": str(out), "resume": "auto"}))
    assert_same_run(out, ref)
    assert all(r["env/tool_calls"] > 0 for r in metrics(ref))


def test_sigkill_during_checkpoint_write_resumes_from_previous_one(uninterrupted, tmp_path, capsys):
    out = tmp_path / "run"
    killed = cli(out, crash_at="save3")  # step 3's files written, its manifest not yet
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoints" / "step_3.tmp").is_dir() and not (out / "checkpoints" / "step_3").exists()
    # metrics.jsonl already has step 3's row; resume must drop it and log step 3 again, once
    assert [r["step"] for r in metrics(out)] == [1, 2, 3]
    assert (
        train_cli.main([str(RECIPE), *[f"--{k}={v}" for k, v in TINY.items()], f"--output_dir={out}", "--resume=auto"])
        == 0
    )
    assert f"resuming from {out / 'checkpoints' / 'step_2'}" in capsys.readouterr().out
    assert not (out / "checkpoints" / "step_3.tmp").exists()
    assert_same_run(out, uninterrupted)
    assert (out / "final" / "config.json").is_file()  # and the HF part loads as a model.path:
    resumed_from = load_config(RECIPE, {**TINY, "model.path": str(out / "checkpoints" / "step_2")})
    from rlvr import model as model_lib

    model_lib.load(resumed_from.model)


STAGES = {
    "sft": (
        "tiny_sft.yaml",
        {
            "sft.steps": 4,
            "sft.seqs_per_step": 4,
            "sft.micro_batch_seqs": 4,
            "sft.eval_examples": 2,
            "sft.eval_max_new_tokens": 8,
        },
    ),
    "dpo": (
        "tiny_dpo.yaml",
        {"dpo.steps": 4, "dpo.pairs_per_step": 4, "dpo.micro_batch_pairs": 4, "dpo.eval_pairs": 2},
    ),
    "reward_model": (
        "tiny_reward_model.yaml",
        {
            "reward_model.steps": 4,
            "reward_model.pairs_per_step": 4,
            "reward_model.micro_batch_pairs": 4,
            "reward_model.eval_pairs": 2,
        },
    ),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_sft_dpo_rm_resume_after_sigkill_equal_uninterrupted_runs(stage, tmp_path):
    recipe, over = STAGES[stage]
    over = {**over, "checkpoint_every": 1, "keep_last": 0, "cpu_threads": 1}
    ref, out = tmp_path / "ref", tmp_path / "run"
    train_stage = __import__(f"rlvr.{stage}", fromlist=["train"]).train
    train_stage(load_config(REPO / "recipes" / recipe, {**over, "output_dir": str(ref)}))
    args = [f"--{k}={v}" for k, v in {**over, "output_dir": str(out)}.items()]
    killed = subprocess.run(
        [sys.executable, "-m", "rlvr.train", str(REPO / "recipes" / recipe), *args],
        cwd=REPO,
        env={**os.environ, "RLVR_CRASH_AT": "step3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    train_stage(load_config(REPO / "recipes" / recipe, {**over, "output_dir": str(out), "resume": "auto"}))
    assert_same_run(out, ref)


# -- checkpoint mechanics, with a stand-in model (no training) ------------------------------------


class Saveable:
    """What checkpoints call on a learner (save_pretrained, save_state, load_state, stage) or tokenizer,
    writing small files."""

    def __init__(self, value: float = 0.0, stage: int = 0):
        self.w, self.stage = torch.full((4,), value), stage

    def load_state(self, path):
        self.w = -torch.load(Path(path) / "learner.pt")

    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(self.w, Path(path) / "weights.pt")

    def save_state(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        torch.save(-self.w, Path(path) / "learner.pt")


def save(root, step, score=None, **kw):
    return ckpt.save(root, step, Saveable(step), Saveable(), {"x": step}, score=score, **kw)


def test_find_latest_skips_incomplete_and_damaged_checkpoints(tmp_path):
    for s in (1, 2, 3):
        save(tmp_path, s)
    (tmp_path / "step_3" / ckpt.MANIFEST).unlink()  # as if killed before the manifest
    with open(tmp_path / "step_2" / "weights.pt", "ab") as f:  # a file changed after the manifest
        f.write(b"x")
    assert ckpt.find_latest(tmp_path) == tmp_path / "step_1"
    assert ckpt.load_state(tmp_path / "step_1")["x"] == 1
    assert "never finished" in ckpt.problem(tmp_path / "step_3")
    assert "wrong size" in ckpt.problem(tmp_path / "step_2")


def test_retention_keeps_last_k_plus_best(tmp_path):
    for s, score in [(1, 0.1), (2, 0.9), (3, 0.2), (4, 0.3), (5, 0.0)]:
        save(tmp_path, s, score=score, keep_last=2, keep_best="max")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_2", "step_4", "step_5"]


def test_resume_setting_auto_path_and_clear_errors(tmp_path):
    out = tmp_path / "run"
    assert prepare_resume(out, "auto") is None  # nothing there: starts fresh
    save(out / "checkpoints", 1)
    save(out / "checkpoints", 2)
    assert prepare_resume(out, "auto") == out / "checkpoints" / "step_2"
    assert ckpt.resolve(str(out), out / "checkpoints") == out / "checkpoints" / "step_2"  # a run dir
    assert ckpt.resolve(str(out / "checkpoints" / "step_1"), out) == out / "checkpoints" / "step_1"
    with pytest.raises(ckpt.CheckpointError, match="is not a directory"):
        ckpt.resolve(str(tmp_path / "nope"), out)
    (out / "checkpoints" / "step_2" / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match="never finished"):
        ckpt.resolve(str(out / "checkpoints" / "step_2"), out)
    with pytest.raises(ckpt.CheckpointError, match="--resume=auto"):  # a fresh run would mix two runs' checkpoints
        prepare_resume(out, "")


def test_resume_restores_metrics_rows_of_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    ckpt.save(out / "checkpoints", 1, Saveable(), Saveable(), {}, metrics_file=out / "metrics.jsonl")
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"st')  # the crashed process went on
    prepare_resume(out, "auto")
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_failed_write_leaves_no_checkpoint_and_names_the_previous(tmp_path, monkeypatch):
    save(tmp_path, 1)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if str(f).endswith(ckpt.STATE):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointError, match="No space left on device.*step_1"):
        save(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1"]
    assert ckpt.find_latest(tmp_path) == tmp_path / "step_1"


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    ckpt.save(tmp_path, 1, Saveable(), Saveable(), {"rng": ckpt.rng_state()})
    before = random.random(), np.random.rand(), torch.rand(1).item()
    ckpt.set_rng_state(ckpt.load_state(tmp_path / "step_1")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == before


def test_resume_with_another_zero_layout_names_the_one_to_use(tmp_path):
    """ZeRO's optimizer shards follow the ranks: a checkpoint resumes only under its own layout, and a
    mismatch says which, instead of DeepSpeed's or torch's file-not-found."""
    from rlvr.data import PromptStream

    state = {"data": PromptStream(8, 0).state(), "rng": ckpt.rng_state()}
    ckpt.save(tmp_path, 1, Saveable(3.0, stage=2), Saveable(), state)
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"1 process\(es\) at deepspeed.zero_stage=2.*zero_stage=0.*"
        r"--deepspeed.zero_stage=2.*--model.path=",
    ):
        ckpt.restore(tmp_path / "step_1", Saveable(stage=0), PromptStream(8, 0))
    learner = Saveable(stage=2)
    assert ckpt.restore(tmp_path / "step_1", learner, PromptStream(8, 0))["step"] == 1
    assert learner.w.tolist() == [3.0] * 4
    ckpt.save(tmp_path, 2, Saveable(stage=0), Saveable(), state)
    ckpt.restore(tmp_path / "step_2", Saveable(stage=0), PromptStream(8, 0))  # plain torch: no layout to match
