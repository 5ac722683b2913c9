"""Shared fixtures: the shipped tiny model and task data, paths into ../shared for data-backed tests, a tiny config,
a 2-process torchrun, and the norm-relative comparison every test of two computations uses."""

import os
import subprocess
import sys
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
        "output_dir": str(tmp_path / "run"),
        "model.path": str(TINY_MODEL),
        "data.train": str(TINY_DATA / "train.jsonl"),
        "data.test": str(TINY_DATA / "test.jsonl"),
        "rl.steps": 2,
        "rl.prompts_per_step": 4,
        "rl.samples_per_prompt": 4,
        "rl.micro_batch_seqs": 8,
        "eval.problems": 8,
        "sampler.max_new_tokens": 40,
    }


def torchrun(*args: str, crash_at: str = "", check: bool = True) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` from the repo (a script path, or -m rlvr.train ...),
    one thread a rank; ``check``: assert it succeeded, showing the end of its output otherwise."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "RLVR_CRASH_AT": crash_at}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert not check or r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return r


@pytest.fixture
def tiny_cfg(tiny_overrides):
    """tiny_cfg({"rl.lr": 1e-3}) -> recipes/tiny_zero.yaml's config with ``tiny_overrides`` and these on top."""
    from rlvr.config import load_config

    return lambda over=None: load_config(REPO / "recipes" / "tiny_zero.yaml", {**tiny_overrides, **(over or {})})


def assert_close_norm(got, want, rel: float, what: str = "", scale: float | None = None) -> float:
    """Assert ||got - want|| <= rel * ||want|| (Frobenius norm, in float64), or rel * scale where a result
    cancels (scale: the size of the terms it sums). Bounds a computation's rounding as a whole: another CPU's
    reduction order moves single elements near zero, not the norm. -> the error as a fraction of the bound."""
    got, want = (
        t.detach().cpu().double() if torch.is_tensor(t) else torch.tensor(t, dtype=torch.float64) for t in (got, want)
    )
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err, size = (got - want).norm().item(), want.norm().item() if scale is None else float(scale)
    ratio = 0.0 if err == 0 else err / (rel * size) if rel * size else float("inf")  # NaN fails too
    assert ratio <= 1.0, f"{what}: ||got - want|| = {err:.3e} > {rel:.1e} x {size:.3e} ({ratio:.3g} x the bound)"
    return ratio
