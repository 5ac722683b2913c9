"""Shared fixtures: the shipped tiny model and task data, paths into ../shared for data-backed tests."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_MODEL = REPO / "rlvr" / "tiny" / "model"
TINY_DATA = REPO / "rlvr" / "tiny" / "data"

# Tiny models run ~10x faster on one thread than on two contended ones.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _models_on_the_cpu():
    """The suite is a CPU suite, also on a machine with a GPU: models load where ``rlvr.dist.device``
    says (the GPU there), and the tests compare against CPU tensors. Tests marked gpu name their device."""
    from rlvr import dist

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dist, "device", lambda: torch.device("cpu"))
        yield


@pytest.fixture
def tiny_overrides(tmp_path):
    """Overrides that turn recipes/tiny_zero.yaml into a run of a few seconds."""
    return {
        "output_dir": str(tmp_path / "run"), "model.path": str(TINY_MODEL),
        "data.train": str(TINY_DATA / "train.jsonl"), "data.test": str(TINY_DATA / "test.jsonl"),
        "grpo.steps": 2, "grpo.prompts_per_step": 4, "grpo.samples_per_prompt": 4, "grpo.micro_batch_seqs": 8,
        "eval.problems": 8, "sampler.max_new_tokens": 40,
    }
