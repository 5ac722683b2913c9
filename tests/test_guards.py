"""Guards of a GRPO run on the tiny model: NaN losses skipped then stopping the run with a checkpoint,
verifiers that raise or hang scored 0 and counted, a sampler crash reported with its batch, SIGINT and
SIGTERM saving a checkpoint, and an unwritable or full output dir refused before training.

    pytest tests/test_guards.py          # about a minute on a busy 2-core box
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest
from conftest import REPO, TINY_DATA, TINY_MODEL
from safetensors.torch import load_file

from rlvr import checkpoint as ckpt, train as train_cli
from rlvr.config import load_config
from rlvr.data import PromptStream
from rlvr.rl import train
from rlvr.run import RunStopped
from rlvr.sampler import HFSampler

RECIPE = REPO / "recipes" / "tiny_zero.yaml"
TINY = {
    "model.path": str(TINY_MODEL),
    "data.train": str(TINY_DATA / "train.jsonl"),
    "data.test": str(TINY_DATA / "test.jsonl"),
    "rl.steps": 3,
    "rl.prompts_per_step": 2,
    "rl.samples_per_prompt": 4,
    "rl.micro_batch_seqs": 8,
    "sampler.max_new_tokens": 16,
    "eval.problems": 2,
    "checkpoint_every": 1,
    "keep_last": 0,
    "cpu_threads": 1,
}


def run(tmp_path, **overrides):
    return train(load_config(RECIPE, {**TINY, "output_dir": str(tmp_path / "run"), **overrides}))


def rows(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def nan_reward_file(tmp_path, bad_calls: str) -> str:
    """A batch reward function that returns NaN on the calls (one per step) ``bad_calls`` selects, and
    rewards that differ within a group (so there is something to learn) otherwise."""
    f = tmp_path / "nan_reward.py"
    f.write_text(
        textwrap.dedent(f"""
        calls = 0

        def nan_reward(prompts, completions, **columns):
            global calls
            calls += 1
            return [float("nan") if {bad_calls} else float(len(c) % 2) for c in completions]
    """)
    )
    return f"{f}:nan_reward"


def test_nan_loss_skips_the_step_and_the_run_goes_on(tmp_path):
    spec = nan_reward_file(tmp_path, "calls == 2")
    run(tmp_path, rewards=[{"verifier": "format"}, {"verifier": spec}])
    r = rows(tmp_path)
    assert [x["skipped_steps"] for x in r] == [0.0, 1.0, 0.0]
    assert r[1]["loss/total"] is None  # logged as null, not as a number
    ckpts = tmp_path / "run" / "checkpoints"
    w1, w2, w3 = weights(ckpts / "step_1"), weights(ckpts / "step_2"), weights(tmp_path / "run" / "final")
    assert all((w1[k] == w2[k]).all() for k in w1)  # the NaN step changed nothing
    assert any((w2[k] != w3[k]).any() for k in w2)  # the next one trained again


def test_nan_steps_in_a_row_stop_the_run_with_a_checkpoint(tmp_path):
    spec = nan_reward_file(tmp_path, "calls >= 2")
    with pytest.raises(RunStopped, match="2 steps in a row had a non-finite loss") as e:
        run(tmp_path, rewards=[{"verifier": spec}], max_bad_steps=2, **{"rl.steps": 6})
    ckpts = tmp_path / "run" / "checkpoints"
    assert "step_3" in str(e.value) and ckpt.find_latest(ckpts) == ckpts / "step_3"
    w1, w3 = weights(ckpts / "step_1"), weights(ckpts / "step_3")
    assert all((w1[k] == w3[k]).all() for k in w1)  # the last finite weights
    assert [x["step"] for x in rows(tmp_path)] == [1, 2, 3]


def test_verifiers_that_raise_or_hang_score_zero_and_are_counted(tmp_path):
    f = tmp_path / "bad_verifiers.py"
    f.write_text(
        textwrap.dedent("""
        import time

        def flaky(completion, answer, **meta):
            if len(completion) % 3 == 0:
                raise ValueError("verifier bug")
            if len(completion) % 3 == 1:
                time.sleep(60)
            return 1.0

        def broken_batch(prompts, completions, **columns):
            raise RuntimeError("batch reward bug")
    """)
    )
    run(
        tmp_path,
        rewards=[{"verifier": f"{f}:flaky"}, {"verifier": f"{f}:broken_batch"}],
        **{"rl.steps": 2, "rl.verifier_timeout_s": 0.5, "rl.verifier_workers": 2},
    )
    r = rows(tmp_path)
    assert [x["step"] for x in r] == [1, 2]
    assert sum(x["verifier/flaky_failures"] for x in r) > 0
    for x in r:  # every failure scores 0, so the mean reward is the share of successes
        assert x["reward/flaky"] == pytest.approx(1 - x["verifier/flaky_failures"] / 8)
        assert x["verifier/broken_batch_failures"] == 8 and x["reward/broken_batch"] == 0.0


def test_sampler_crash_names_its_batch_and_leaves_a_checkpoint(tmp_path, monkeypatch):
    real, calls = HFSampler.generate, []

    def generate(self, *a, **k):  # call 1: initial eval, 2: step 1, 3: step 2
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real(self, *a, **k)

    monkeypatch.setattr(HFSampler, "generate", generate)
    with pytest.raises(RunStopped) as e:
        run(tmp_path, checkpoint_every=0)
    n = sum(1 for line in (TINY_DATA / "train.jsonl").read_text().splitlines() if line.strip())
    stream = PromptStream(n, 0)
    stream.take(2)
    ids = [str(i) for i in stream.take(2)]
    msg = str(e.value)
    assert "step 2" in msg and str(ids) in msg and "device-side assert" in msg
    ckpts = tmp_path / "run" / "checkpoints"
    assert ckpt.find_latest(ckpts) == ckpts / "step_1"  # the state before the failed step, resumable
    assert ckpt.load_state(ckpts / "step_1")["data"] == {"epoch": 0, "pos": 2}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_then_exits(tmp_path, sig):
    out = tmp_path / "run"
    args = [f"--{k}={v}" for k, v in {**TINY, "output_dir": str(out), "checkpoint_every": 0, "rl.steps": 200}.items()]
    p = subprocess.Popen(
        [sys.executable, "-m", "rlvr.train", str(RECIPE), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.2)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err[-2000:]
    assert f"stopped by {sig.name}" in err
    last = rows(tmp_path)[-1]["step"]
    assert ckpt.find_latest(out / "checkpoints") == out / "checkpoints" / f"step_{last}"


def test_unwritable_output_dir_is_refused_before_training(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    out = tmp_path / "a_file" / "run"
    assert train_cli.main([str(RECIPE), f"--output_dir={out}", f"--model.path={TINY_MODEL}"]) == 1
    assert "not writable" in capsys.readouterr().err


def test_full_disk_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: namedtuple("du", "total used free")(10**9, 10**9, 10**6))
    args = [f"--{k}={v}" for k, v in {**TINY, "output_dir": str(tmp_path / "run")}.items()]
    assert train_cli.main([str(RECIPE), *args]) == 1
    assert "MiB free but a checkpoint needs" in capsys.readouterr().err
    assert not (tmp_path / "run" / "eval_initial_samples.jsonl").exists()  # stopped before any work
