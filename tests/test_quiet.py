"""Quiet runs: the GRPO smoke run prints no deprecation or future warning caused by our calls into
transformers, torch or the verifiers, on the versions the README's commands install: warnings are errors
in it, and transformers' own deprecation notices (logged, not warned) must not appear either."""

import subprocess
import sys

from conftest import REPO


def test_grpo_smoke_run_has_no_deprecation_or_future_warnings(tiny_overrides):
    args = [f"--{k}={v}" for k, v in tiny_overrides.items()]
    cmd = [
        sys.executable,
        "-W",
        "error::DeprecationWarning",
        "-W",
        "error::FutureWarning",
        "-m",
        "rlvr.train",
        "recipes/tiny_zero.yaml",
        *args,
    ]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    noisy = [line for line in out.splitlines() if "deprecat" in line.lower() or "Warning" in line]
    assert not noisy, noisy
