"""Run outputs: one flat metrics dict per step to ``metrics.jsonl``, TensorBoard and (``log.wandb``) Weights &
Biases, rank 0 only; and ``Tally``, the sums behind a step's metrics."""

from __future__ import annotations

import json
import math
import os
import secrets
from pathlib import Path

from rlvr import dist


def prepare_output_dir(path: str) -> Path:
    """Create the output dir and prove it is writable before any work starts."""
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(
            f"output_dir {str(out)!r} is not writable ({e.strerror}); pick another with --output_dir=PATH"
        ) from None
    return out


def read_records(path: Path) -> list[dict]:
    """The JSONL rows of a file this process or an interrupted one appended to (``metrics.jsonl``, an
    evaluation's ``samples.jsonl``): a torn last line ends the list; a missing file is empty."""
    if not Path(path).exists():
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # written up to a crash: what follows is regenerated
    return out


def write_json_atomic(path: Path, data) -> None:
    """Write-then-rename: a crash leaves the old file or the new one, never half of one."""
    _write_atomic(path, json.dumps(data, indent=1))


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """``rows`` one JSON object a line, written then renamed like ``write_json_atomic``."""
    _write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLogger:
    """One flat dict per step into ``metrics.jsonl``, TensorBoard and, when ``wandb.project`` is set,
    Weights & Biases (rank 0: ``enabled``). A resumed run passes its ``first_step``: TensorBoard then drops
    the crashed run's events from that step on, as ``rlvr.run.prepare_resume`` already trimmed
    ``metrics.jsonl``, so no curve shows the lost steps twice; W&B continues the same run (its id is kept
    in ``output_dir/wandb_id``) and ignores steps it already has."""

    def __init__(
        self,
        out_dir: Path,
        enabled: bool = True,
        tensorboard: bool = True,
        first_step: int = 1,
        wandb=None,
        run_config: dict | None = None,
    ):
        self.enabled = enabled
        self.file = open(out_dir / "metrics.jsonl", "a") if enabled else None
        self.tb = self.wandb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=first_step if first_step > 1 else None)
        if enabled and wandb is not None and wandb.project:
            self.wandb = _wandb_run(out_dir, wandb, run_config)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        finite = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        row = {
            "step": step,
            **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()},
        }
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in finite.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(finite, step=step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(out_dir: Path, cfg, run_config: dict | None):
    """A W&B run for ``log.wandb`` (``cfg``), with the resolved config attached; a resumed output dir
    continues the run it started."""
    import wandb

    id_file = out_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    id_file.write_text(run_id)
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity or None,
        name=cfg.name or out_dir.name,
        group=cfg.group or None,
        tags=cfg.tags or None,
        mode=cfg.mode,
        dir=str(out_dir),
        id=run_id,
        resume="allow",
        config=run_config,
    )


class Tally:
    """Sums of a step's metrics over its micro-batches, then over ranks (``global_sums``): the loops divide
    them by their own denominators (tokens, sequences, pairs, optimizer steps)."""

    def __init__(self):
        self.sums: dict[str, float] = {}

    def add(self, key: str, value) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def global_sums(self, keys=None) -> dict[str, float]:
        """``keys`` (default: every key added, in order) summed over ranks; each rank must pass the same
        keys in the same order, a key it never added counting 0."""
        return {k: dist.global_sum(self.sums.get(k, 0.0)) for k in (self.sums if keys is None else keys)}
