"""The weight-sync guard (rl.sync_max_gap) on the hf sampler: a sampler that holds its own copy of the weights
and misses a sync (all of it, or one tensor) stops the run before the next step samples, with step - 1's state
saved; healthy runs log the probe's gap and go on; with LoRA too (the copy is the plain model, fed merged weights).
The vLLM sampler's case is in tests/test_vllm_sampler.py.

    pytest tests/test_sync_guard.py          # about half a minute on a busy 2-core box
"""

from __future__ import annotations

import copy
import json

import pytest
from conftest import REPO, TINY_DATA, TINY_MODEL
from safetensors.torch import load_file

from rlvr import checkpoint as ckpt, model as model_lib, rl
from rlvr.config import ConfigError, load_config
from rlvr.run import RunStopped
from rlvr.sampler import HFSampler

RECIPE = REPO / "recipes" / "tiny_zero.yaml"
TINY = {
    "model.path": str(TINY_MODEL),
    "data.train": str(TINY_DATA / "train.jsonl"),
    "data.test": str(TINY_DATA / "test.jsonl"),
    "rl.steps": 3,
    "rl.prompts_per_step": 4,
    "rl.samples_per_prompt": 4,
    "rl.micro_batch_seqs": 16,
    "sampler.max_new_tokens": 16,
    "eval.problems": 4,
    "keep_last": 0,
    "cpu_threads": 1,
}
LEFT_OUT = "model.layers.0.mlp.down_proj.weight"
LORA = {"model.lora.r": 8, "model.lora.alpha": 16, "rl.lr": 5e-3}  # recipes/tiny_zero_lora.yaml's


class CopySampler(HFSampler):
    """An hf sampler over its own copy of the learner's model, as a separate engine holds one (a LoRA policy's
    merged into the plain model); ``left_out``: the names its update_weights drops (``"all"``: the update is
    skipped)."""

    def __init__(self, model, tokenizer, left_out):
        own = copy.deepcopy(model)
        super().__init__(own.merge_and_unload() if model_lib.is_lora(own) else own, tokenizer, batch_seqs=256)
        self.left_out = left_out

    def update_weights(self, named_tensors) -> None:
        kept = {n: t.detach().clone() for n, t in named_tensors if self.left_out != "all" and n not in self.left_out}
        self.model.load_state_dict(kept, strict=False)


def run(tmp_path, monkeypatch, left_out=None, **overrides):
    if left_out is not None:
        monkeypatch.setattr(rl, "make_sampler", lambda s, m, model, tok, seed: CopySampler(model, tok, left_out))
    # rewards that differ within every group, so that every step learns and a missed sync is a stale sampler
    tmp_path.mkdir(exist_ok=True)
    reward = tmp_path / "parity.py"
    reward.write_text(
        "def parity(prompts, completions, **columns):\n    return [float(len(c) % 2) for c in completions]\n"
    )
    cfg = {**TINY, "output_dir": str(tmp_path / "run"), "rewards": [{"verifier": f"{reward}:parity"}], **overrides}
    return rl.train(load_config(RECIPE, cfg))


def rows(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", [{}, LORA], ids=["full", "lora"])
@pytest.mark.parametrize("left_out", ["all", (LEFT_OUT,)], ids=["update_skipped", "one_tensor_left_out"])
def test_a_stale_sampler_stops_the_run_before_the_next_step_with_a_checkpoint(tmp_path, monkeypatch, left_out, lora):
    with pytest.raises(RunStopped) as e:
        run(tmp_path, monkeypatch, left_out, **lora)
    msg = str(e.value)
    assert "weight-sync guard before step 2" in msg and "rl.sync_max_gap=0.0001" in msg, msg
    assert "not delivered" in msg and "left out" in msg and "name" in msg
    gap = float(msg.split("gap| of ")[1].split()[0])
    print(f"stale sampler's probe gap: {gap:.3g}")
    assert gap > 1e-3, msg  # one step of the tiny demo moves the probe well past the threshold
    (r,) = rows(tmp_path)  # step 1 learnt (its sync was the stale one) and logged a healthy gap
    assert r["step"] == 1 and r["grad_norm"] > 0 and r["sync/probe_gap"] == 0.0
    ckpts = tmp_path / "run" / "checkpoints"
    assert ckpt.find_latest(ckpts) == ckpts / "step_1"  # the state before step 2, resumable
    assert ckpt.load_state(ckpts / "step_1")["data"] == {"epoch": 0, "pos": 4}
    if lora:  # the adapter after step 1: LEFT_OUT's (down_proj's) moved
        saved = load_file(str(ckpts / "step_1" / "adapter_model.safetensors"))
        assert saved["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].abs().max() > 0
        return
    base = load_file(str(TINY_MODEL / "model.safetensors"))
    saved = load_file(str(ckpts / "step_1" / "model.safetensors"))
    assert not saved[LEFT_OUT].equal(base[LEFT_OUT])  # the learner's weights after step 1, not the sampler's


def test_healthy_syncs_log_the_gap_and_never_stop(tmp_path, monkeypatch):
    """A copy synced in full scores the probe exactly as the learner does; so does the shared-module sampler."""
    run(tmp_path, monkeypatch, left_out=())
    assert [r["step"] for r in rows(tmp_path)] == [1, 2, 3]
    assert all(r["sync/probe_gap"] == 0.0 for r in rows(tmp_path)), rows(tmp_path)
    monkeypatch.undo()  # the shared-module sampler, not the copy
    run(tmp_path / "shared", monkeypatch)
    assert all(r["sync/probe_gap"] == 0.0 for r in rows(tmp_path / "shared"))


def test_healthy_lora_syncs_never_stop(tmp_path, monkeypatch):
    """With LoRA the copy multiplies by the merged weights where the learner adds the adapters' own path: a gap of
    float rounding only; the shared-module sampler runs the learner's very module: exactly 0."""
    run(tmp_path, monkeypatch, left_out=(), **LORA)
    gaps = [r["sync/probe_gap"] for r in rows(tmp_path)]
    print(f"healthy LoRA probe gaps: {gaps}")
    assert len(gaps) == 3 and gaps[0] == 0.0 and max(gaps) < 1e-5, gaps  # step 1: B = 0, merged = base exactly
    monkeypatch.undo()
    run(tmp_path / "shared", monkeypatch, **LORA)
    assert all(r["sync/probe_gap"] == 0.0 for r in rows(tmp_path / "shared"))


def test_zero_turns_the_guard_off_and_negative_is_refused(tmp_path, monkeypatch):
    run(tmp_path, monkeypatch, left_out="all", **{"rl.steps": 2, "rl.sync_max_gap": 0})
    assert [r["step"] for r in rows(tmp_path)] == [1, 2] and "sync/probe_gap" not in rows(tmp_path)[0]
    with pytest.raises(ConfigError, match="sync_max_gap"):
        load_config(RECIPE, {**TINY, "rl.sync_max_gap": -1})
