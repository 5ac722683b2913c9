"""MetricsLogger: a resumed run's TensorBoard curves hold each step once (the crashed run's later events go);
Weights & Biases gets the metrics and the resolved config when a recipe asks for it."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlvr.log import MetricsLogger


def test_resumed_logger_replaces_the_crashed_runs_later_steps(tmp_path):
    first = MetricsLogger(tmp_path)
    for step in (1, 2, 3, 4):  # the crashed run got to step 4; its checkpoint is step 2
        first.log(step, {"loss/pg": float(step)})
    first.close()
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss/pg": float(s)}) + "\n" for s in (1, 2))
    )
    resumed = MetricsLogger(tmp_path, first_step=3)
    for step in (3, 4):
        resumed.log(step, {"loss/pg": 10.0 + step})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss/pg")] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss/pg"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def wandb_records(run_dir):
    """(config, [history rows]) of an offline W&B run, read from its .wandb file: a LevelDB-style log of
    protobuf records (32 KiB blocks of crc32, length, type + data chunks) after a 7-byte header."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, chunk, block = path.read_bytes(), 7, b"", 32768
    config, history = {}, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = chunk + data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 4):  # a full record, or the last chunk of one
            rec = pb.Record()
            rec.ParseFromString(chunk)
            chunk = b""
            if rec.WhichOneof("record_type") == "run":
                config = {i.key: json.loads(i.value_json) for i in rec.run.config.update}
            elif rec.WhichOneof("record_type") == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return config, history


def test_a_recipe_logs_to_weights_and_biases_offline_with_its_config(tmp_path, tiny_overrides, monkeypatch):
    """log.wandb: the run's metrics and resolved config reach W&B (offline mode: nothing leaves the machine)."""
    pytest.importorskip("wandb")
    from conftest import REPO

    from rlvr.config import load_config
    from rlvr.rl import train

    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(
        REPO / "recipes" / "tiny_zero.yaml",
        {**tiny_overrides, "log.wandb.project": "rlvr-test", "log.wandb.mode": "offline"},
    )
    train(cfg)
    out = tmp_path / "run"
    config, history = wandb_records(out)
    assert config["rl"]["steps"] == 2 and config["model"]["path"] == str(cfg.model.path) and "sft" not in config
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {r["_step"]: r for r in history}
    assert sorted(logged) == [1, 2]
    for row in rows:
        assert logged[row["step"]]["reward/total"] == row["reward/total"]
        assert logged[row["step"]]["loss/pg"] == row["loss/pg"]


def test_wandb_is_off_unless_the_recipe_asks_and_on_rank_0_only(tmp_path):
    from rlvr.config import WandbConfig

    MetricsLogger(tmp_path).close()
    MetricsLogger(tmp_path, enabled=False, wandb=WandbConfig(project="p", mode="offline")).close()  # rank 1..N
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_id").exists()
