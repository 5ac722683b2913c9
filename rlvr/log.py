"""Run outputs: one flat metrics dict per step to ``metrics.jsonl`` and TensorBoard, rank 0 only."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def prepare_output_dir(path: str) -> Path:
    """Create the output dir and prove it is writable before any work starts."""
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"output_dir {str(out)!r} is not writable ({e.strerror}); pick another with --output_dir=PATH") from None
    return out


def write_json_atomic(path: Path, data) -> None:
    """Write-then-rename: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLogger:
    """One flat dict per step into ``metrics.jsonl`` and TensorBoard (rank 0: ``enabled``). A resumed run
    passes its ``first_step``: TensorBoard then drops the crashed run's events from that step on, as
    ``prepare_resume`` already trimmed ``metrics.jsonl``, so no curve shows the lost steps twice."""

    def __init__(self, out_dir: Path, enabled: bool = True, tensorboard: bool = True, first_step: int = 1):
        self.enabled = enabled
        self.file = open(out_dir / "metrics.jsonl", "a") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=first_step if first_step > 1 else None)
            except ImportError:  # tensorboard is a dependency, but a missing one should not stop training
                self.tb = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
