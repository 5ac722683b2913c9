"""Resumable checkpoints: write atomically, validate, find the newest, prune, restore RNG.

    path = checkpoint.save(out / "checkpoints", step, learner, tokenizer, state, metrics_file=out / "metrics.jsonl")
    ckpt = checkpoint.find_latest(out / "checkpoints")        # newest *valid* one, or None
    state = checkpoint.restore(ckpt, learner, stream)         # optimizer, scheduler, data, RNG; -> the extras

A checkpoint is a directory ``step_N`` holding the HF model (``save_pretrained``, so it is a valid
``model.path``; a LoRA policy's adapter instead, a valid ``model.lora.adapter``), ``learner/`` (optimizer
and scheduler: one file, or one shard per rank under ZeRO),
``trainer_state.pt`` (whatever the loop passes: data position, RNG states, summary), ``config.yaml``,
the ``metrics.jsonl`` rows up to step N, and ``manifest.json``. Every rank calls ``save``; rank 0
writes everything but its own optimizer shards.
It is built under ``step_N.tmp``, every file fsynced, the manifest (file names and sizes) written
last, then renamed into place: a crash at any point leaves either no ``step_N`` or a complete one,
and ``is_valid`` rejects any directory whose manifest is missing or disagrees with the files.
``rlvr.run`` decides when to save and what a loop's state holds; this module knows only the format.

Fault injection for tests: ``RLVR_CRASH_AT=<point>`` SIGKILLs the process at ``crash_point(<point>)``
(e.g. ``step3`` in the middle of GRPO step 3, ``save4`` while step 4's checkpoint is half written).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from pathlib import Path

import torch

from rlvr import dist

MANIFEST = "manifest.json"
STATE = "trainer_state.pt"
_NAME = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or used; the message names the path and the fix."""


def crash_point(name: str) -> None:
    """Die like a preempted machine (SIGKILL: no cleanup, no handlers) when RLVR_CRASH_AT names this point."""
    if os.environ.get("RLVR_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    # The rename is only durable once the directory entry itself reaches the disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_model(learner, tokenizer, path: Path) -> None:
    """HF format only (``final``), written under a temporary name, fsynced and renamed. Every rank
    calls (a ``Learner`` gathers sharded weights); rank 0 writes. A LoRA policy's is the merged model, a plain
    ``model.path`` for evaluation and later stages, with its adapter in ``path/adapter``."""
    path, main = Path(path), dist.is_main()
    tmp = path.with_name(path.name + ".tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    learner.save_pretrained(tmp, merged=True)  # a LoRA policy's merged into the plain model, its adapter in adapter/
    if main:
        tokenizer.save_pretrained(tmp)
        _sync_tree(tmp)
        _replace_dir(tmp, path)
    dist.barrier()


def _sync_tree(path: Path) -> dict[str, int]:
    """fsync every file under path; -> {relative name: size} for the manifest."""
    files = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
        files[str(f.relative_to(path))] = f.stat().st_size
    for d in [path, *(p for p in path.rglob("*") if p.is_dir())]:
        _fsync_dir(d)
    return files


def _replace_dir(tmp: Path, path: Path) -> None:
    # os.replace cannot overwrite a non-empty directory: move the old one aside first, so that at
    # every instant either the old or the new complete directory sits at ``path``... or neither,
    # for a moment, which resume handles by picking the previous step.
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def save(
    root: Path,
    step: int,
    learner,
    tokenizer,
    state: dict,
    *,
    config_text: str = "",
    metrics_file: Path | None = None,
    score: float | None = None,
    keep_last: int = 0,
    keep_best: str = "",
    others: dict | None = None,
) -> Path:
    """Write checkpoint ``root/step_<step>`` atomically, then ``prune(root, keep_last, keep_best)``; -> its
    path. Every rank calls. ``learner``: a ``rlvr.learner.Learner`` (``save_pretrained`` and ``save_state``).
    ``state`` must load with weights_only (tensors, numbers, strings, lists, dicts). ``score`` is what
    ``prune`` ranks by when keeping the best one. ``others``: more learners by name (PPO's critic), each
    saved as ``NAME/`` (its HF model) and ``NAME_learner/`` (its optimizer and scheduler)."""
    root, main = Path(root), dist.is_main()
    path, tmp = root / f"step_{step}", root / f"step_{step}.tmp"
    try:
        if main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        dist.barrier()  # the directory exists before any rank writes its shard into it
        for name, lrn in {"": learner, **(others or {})}.items():
            lrn.save_pretrained(tmp / name)
            lrn.save_state(tmp / f"{name}_learner".lstrip("_"))  # ends with a barrier: every shard is on disk
        if main:
            for name in ["", *(others or {})]:
                tokenizer.save_pretrained(tmp / name)
            # The learner's layout: ZeRO shards the optimizer state by rank, so a resume must match it.
            layout = {"world_size": dist.world_size(), "zero_stage": learner.stage}
            torch.save({"step": step, "layout": layout, **state}, tmp / STATE)
            if config_text:
                (tmp / "config.yaml").write_text(config_text)
            if metrics_file is not None and Path(metrics_file).exists():
                shutil.copyfile(metrics_file, tmp / "metrics.jsonl")
            crash_point(f"save{step}")
            files = _sync_tree(tmp)
            with open(tmp / MANIFEST, "w") as f:  # last: its presence is what makes the checkpoint valid
                json.dump({"step": step, "score": score, "files": files}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _replace_dir(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = find_latest(root)
        raise CheckpointError(
            f"could not write checkpoint {path} ({e.strerror or e}); nothing partial was left behind"
            + (f"; the newest valid checkpoint is {prev}" if prev else "")
            + ". Free space or pick another output_dir"
        ) from e
    dist.barrier()  # no rank moves on (or reads it) before the checkpoint is in place
    if main:
        prune(root, keep_last, keep_best)
    return path


def restore(path: Path, learner, stream, others: dict | None = None) -> dict:
    """Load checkpoint ``path`` back into the learner (optimizer, scheduler; its weights are loaded from
    ``path`` as a model directory), the data stream and the RNG states: call it last before the loop,
    once nothing else will draw random numbers. ``others``: the learners ``save`` wrote by name (their
    weights are loaded from ``path/NAME``). -> the whole loop state (``state["step"]``, the extras)."""
    state = load_state(path)
    saved, now = state.get("layout"), {"world_size": dist.world_size(), "zero_stage": learner.stage}
    if saved and saved != now and (saved["zero_stage"] or now["zero_stage"]):  # plain torch: any world size
        raise CheckpointError(
            f"{path} was saved by {saved['world_size']} process(es) at deepspeed.zero_stage={saved['zero_stage']}, "
            f"this run has {now['world_size']} at zero_stage={now['zero_stage']}; its optimizer state is sharded that "
            f"way, so resume with the same (torchrun --nproc_per_node {saved['world_size']} ... "
            f"--deepspeed.zero_stage={saved['zero_stage']}), or start a new run from its weights with "
            f"--model.path={path} (fresh optimizer state)"
        )
    learner.load_state(Path(path) / "learner")
    for name, other in (others or {}).items():
        other.load_state(Path(path) / f"{name}_learner")
    stream.load_state(state["data"])
    set_rng_state(state["rng"])
    return state


def manifest(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def problem(path: Path) -> str | None:
    """Why ``path`` is not a usable checkpoint, or None when it is."""
    path = Path(path)
    if not path.is_dir():
        return f"{path} is not a directory"
    m = manifest(path)
    if m is None:
        return f"{path} has no readable {MANIFEST}: its write never finished (crash or full disk)"
    for name, size in m.get("files", {}).items():
        f = path / name
        if not f.is_file() or f.stat().st_size != size:
            return f"{path}/{name} is missing or has the wrong size: the checkpoint is damaged"
    if STATE not in m.get("files", {}) or not any(f.startswith("learner/") for f in m["files"]):
        return f"{path} has no {STATE} or learner/: it holds a model but not the training state"
    return None


def is_valid(path: Path) -> bool:
    return problem(path) is None


def _steps(root: Path) -> list[tuple[int, Path]]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return sorted(found)


def find_latest(root: Path) -> Path | None:
    """The newest valid checkpoint under ``root``; incomplete or damaged ones are skipped."""
    for _, p in reversed(_steps(root)):
        if is_valid(p):
            return p
    return None


def resolve(resume: str, root: Path) -> Path | None:
    """``resume`` setting -> checkpoint to load. "" : none; "auto": newest valid under ``root`` (None
    if there is none); a path: that checkpoint, or the newest valid one in a run's checkpoints dir."""
    if not resume:
        return None
    if resume == "auto":
        return find_latest(root)
    path = Path(resume).expanduser()
    for candidate in (path / "checkpoints", path):
        if candidate.is_dir() and not (candidate / MANIFEST).exists() and _steps(candidate):
            latest = find_latest(candidate)
            if latest is None:
                raise CheckpointError(
                    f"resume={resume!r}: no valid checkpoint in {candidate} (every one is incomplete)"
                )
            return latest
    why = problem(path)
    if why:
        raise CheckpointError(
            f"resume={resume!r}: {why}. Use --resume=auto for the newest valid checkpoint in output_dir"
        )
    return path


def load_state(path: Path) -> dict:
    """The loop's state dict saved with the checkpoint (weights_only: a checkpoint cannot run code)."""
    why = problem(path)
    if why:
        raise CheckpointError(why)
    return torch.load(Path(path) / STATE, weights_only=True)


def prune(root: Path, keep_last: int, keep_best: str = "") -> list[Path]:
    """Delete all but the newest ``keep_last`` valid checkpoints, plus the best by manifest score when
    ``keep_best`` is "max" or "min"; leftovers of interrupted writes go too. -> the deleted paths."""
    steps = _steps(root)
    valid = [(s, p) for s, p in steps if is_valid(p)]
    keep = {p for _, p in valid[-keep_last:]} if keep_last > 0 else {p for _, p in valid}
    scored = [(manifest(p)["score"], p) for _, p in valid if manifest(p).get("score") is not None]
    if keep_best in ("max", "min") and scored:
        keep.add((max if keep_best == "max" else min)(scored, key=lambda sp: sp[0])[1])
    doomed = [p for _, p in steps if p not in keep]
    doomed += [p for p in Path(root).glob("step_*") if p.name.endswith((".tmp", ".old"))]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def check_space(path: Path, need_bytes: int) -> None:
    """Fail before training when the disk under ``path`` cannot hold one more checkpoint."""
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise CheckpointError(
            f"{path} has {free / 2**20:.0f} MiB free but a checkpoint needs about {need_bytes / 2**20:.0f} MiB; "
            f"free space or pick another output_dir"
        )


def checkpoint_bytes(model) -> int:
    """Rough size of a GRPO/SFT/DPO checkpoint: the trained weights plus AdamW's two moments, with 10% slack (a
    LoRA policy's checkpoint holds its adapters alone)."""
    # ZeRO-3 leaves each rank a shard: ds_numel is the whole tensor's size
    trained = [p for p in model.parameters() if p.requires_grad]
    return int(3.3 * sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in trained))


def rng_state() -> dict:
    """Python, numpy and torch RNG states as plain lists/tensors (loadable with weights_only)."""
    import numpy as np

    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    out = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]}},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.array(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
