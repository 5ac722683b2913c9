"""MetricsLogger: a resumed run's TensorBoard curves hold each step once (the crashed run's later events go)."""

from __future__ import annotations

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlvr.log import MetricsLogger


def test_resumed_logger_replaces_the_crashed_runs_later_steps(tmp_path):
    first = MetricsLogger(tmp_path)
    for step in (1, 2, 3, 4):  # the crashed run got to step 4; its checkpoint is step 2
        first.log(step, {"loss/pg": float(step)})
    first.close()
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss/pg": float(s)}) + "\n" for s in (1, 2)))
    resumed = MetricsLogger(tmp_path, first_step=3)
    for step in (3, 4):
        resumed.log(step, {"loss/pg": 10.0 + step})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss/pg")] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss/pg"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]
