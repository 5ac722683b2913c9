"""The run lifecycle every training stage shares: output dir, resume, signals, end of step, final save.

    run = Run(cfg, cfg.sft, show={"loss": "loss"})        # joins the process group, prepares output_dir, seeds
    model, tok = model_lib.load(run.model_config(cfg.model))  # a resumed run continues from its checkpoint
    learner = Learner.for_stage(model, cfg.deepspeed, cfg.sft)
    summary = run.begin(learner, tok, stream, {"train_rows": n}, initial=evaluate)  # restore, or evaluate the start
    with run:                               # SIGINT/SIGTERM: finish the step, save a checkpoint, stop
        for step in run.steps():            # a progress bar over the steps left
            ...                             # the stage's own loop body: forward, backward, optimizer step
            run.end_step(step, metrics)     # scheduler, metrics.jsonl, NaN streaks, due checkpoints, signals
    summary = run.finish(summary)       # the final HF model and summary.json

Every rank runs all of it; rank 0 alone writes files and prints. The on-disk checkpoint format lives in
``rlvr.checkpoint``; what a checkpoint's loop state holds (data position, RNG, summary, the count of bad
steps) is decided here, the same for every stage.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from rlvr import checkpoint as ckpt, config as config_lib, dist
from rlvr.log import MetricsLogger, prepare_output_dir, write_json_atomic


class RunStopped(RuntimeError):
    """Training stopped on purpose (a guard tripped, a signal) after saving a checkpoint to resume from."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class Run:
    """One training run of a stage. ``section`` is the stage's config section (``cfg.rl``, ``cfg.sft``,
    ...): its ``steps`` end the run. ``show`` maps progress-bar labels to metric keys."""

    def __init__(self, cfg, section, show: dict[str, str]):
        self.t_start = time.time()
        self.cfg, self.section, self.show = cfg, section, show
        self.main = dist.is_main()
        self.out, self.resume_from = start(cfg)
        self.logger, self.stop, self.bar, self.others = None, None, None, {}
        dist.print0(f"resolved config (saved to {self.out / 'config.yaml'}):\n{config_lib.dump(cfg)}")

    def model_config(self, model_cfg, name: str = ""):
        """``model_cfg``, continuing from the checkpoint's weights when resuming (a checkpoint is an HF model;
        ``name``: the one it holds for another learner, e.g. the critic). With LoRA the checkpoint holds the adapter:
        the base model still comes from ``model.path``, the adapter from the checkpoint."""
        if not self.resume_from:
            return model_cfg
        if model_cfg.lora.r:
            return dataclasses.replace(
                model_cfg, lora=dataclasses.replace(model_cfg.lora, adapter=str(self.resume_from / name))
            )
        return dataclasses.replace(model_cfg, path=str(self.resume_from / name))

    def begin(self, learner, tokenizer, stream, summary: dict, initial=None, others: dict | None = None) -> dict:
        """Restore the checkpoint (optimizer, scheduler, ``stream``, RNG, summary), or start ``summary``
        with ``initial()`` (e.g. the evaluation before training). Call last before the loop: it restores
        the RNG states. ``others``: more learners, by name, saved and restored with the policy's (a
        critic). -> the run's summary, which the stage adds to and ``finish`` saves."""
        self.learner, self.tokenizer, self.stream, self.others = learner, tokenizer, stream, others or {}
        size = sum(ckpt.checkpoint_bytes(lrn.module) for lrn in [learner, *self.others.values()])
        ckpt.check_space(self.out, size)  # before any step's work is at stake
        if self.resume_from:
            state = ckpt.restore(self.resume_from, learner, stream, self.others)
            self.summary, self.bad_steps, self.first = state["summary"], state["bad_steps"], state["step"] + 1
        else:
            self.summary, self.bad_steps, self.first = summary, 0, 1
            if initial is not None:
                self.summary.update(initial())
        log = self.cfg.log
        self.logger = MetricsLogger(
            self.out,
            enabled=self.main,
            tensorboard=log.tensorboard,
            first_step=self.first,
            wandb=log.wandb,
            run_config=config_lib.to_dict(self.cfg),
        )
        return self.summary

    def __enter__(self):
        """``with run:`` around the loop turns SIGINT/SIGTERM into a checkpoint and a stop after the step."""
        self.stop = StopRequest().__enter__()
        return self

    def __exit__(self, *exc):
        self.stop.__exit__(*exc)
        if self.bar is not None:
            self.bar.close()

    def steps(self):
        """The steps left, under a progress bar."""
        total = self.section.steps
        self.bar = tqdm(
            range(self.first, total + 1),
            desc=self.cfg.stage,
            dynamic_ncols=True,
            initial=self.first - 1,
            total=total,
            disable=not self.main,
        )
        for step in self.bar:
            self.t_step = time.time()
            yield step

    def end_step(self, step: int, metrics: dict) -> None:
        """How every step ends: the LR schedule advances (when the step learnt: ``grad_norm`` is in
        ``metrics``), the metrics are logged, and a checkpoint is saved when one is due, on SIGINT/SIGTERM
        (seen by any rank) or after ``max_bad_steps`` steps in a row with a non-finite loss or gradient;
        the last two stop the run (``RunStopped``)."""
        cfg, learner = self.cfg, self.learner
        if "grad_norm" in metrics:  # the LR schedules advance with the steps that learnt
            for name, lrn in {"": learner, **self.others}.items():
                lrn.scheduler.step()
                metrics[f"{name}/lr".lstrip("/")] = lrn.scheduler.get_last_lr()[0]
        metrics.setdefault("perf/step_s", time.time() - self.t_step)
        metrics["perf/elapsed_s"] = time.time() - self.t_start  # since this process began the run
        ckpt.crash_point(f"step{step}")
        self.logger.log(step, metrics)
        self.bar.set_postfix({label: f"{metrics.get(key, float('nan')):.3f}" for label, key in self.show.items()})
        self.bad_steps = 0 if math.isfinite(metrics.get("grad_norm", 0.0)) else self.bad_steps + 1
        if self.bad_steps and self.main:
            tqdm.write(
                f"step {step}: non-finite loss or gradient, update skipped ({self.bad_steps} such step(s) in a "
                f"row; the run stops at max_bad_steps={cfg.max_bad_steps})"
            )
        due = cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step != self.section.steps
        signum = int(dist.global_max(self.stop.signum or 0))  # a signal seen by any rank stops them all here
        if due or signum or self.bad_steps >= cfg.max_bad_steps:
            path = self.save(step, metrics.get(cfg.keep_best_metric))
        if self.bad_steps >= cfg.max_bad_steps:
            raise RunStopped(
                f"stopped at step {step}: {self.bad_steps} steps in a row had a non-finite loss or gradient (skipped, "
                f"so the weights in {path} are the last finite ones). Check the data and rewards for NaN, lower "
                f"{'rl' if cfg.stage == 'distill' else cfg.stage}.lr, then --resume={path}"
            )
        if signum:
            raise RunStopped(
                f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint {path}; "
                f"continue with --resume=auto",
                exit_code=128 + signum,
            )

    def save(self, step: int, score: float | None = None, **state) -> Path:
        """Checkpoint ``step`` (every rank calls: ZeRO shards are written by their ranks). ``state`` overrides
        the loop state saved, e.g. the data position and RNG of the step's start for a checkpoint of step - 1."""
        cfg = self.cfg
        state = {
            "data": self.stream.state(),
            "rng": ckpt.rng_state(),
            "summary": self.summary,
            "bad_steps": self.bad_steps,
            **state,
        }
        return ckpt.save(
            self.out / "checkpoints",
            step,
            self.learner,
            self.tokenizer,
            state,
            config_text=config_lib.dump(cfg),
            metrics_file=self.out / "metrics.jsonl",
            score=score,
            keep_last=cfg.keep_last,
            keep_best=cfg.keep_best_mode if cfg.keep_best_metric else "",
            others=self.others,
        )

    def finish(self, summary: dict) -> dict:
        """The final HF model (``output_dir/final``), ``steps`` and ``wall_s`` added to ``summary``, saved as
        ``summary.json``; every rank calls. -> the summary."""
        for name, lrn in {"": self.learner, **self.others}.items():  # final/, and e.g. final_critic/
            ckpt.save_model(lrn, self.tokenizer, self.out / f"final_{name}".rstrip("_"))
        summary.update(steps=self.section.steps, wall_s=round(time.time() - self.t_start, 1))
        self.logger.close()
        if self.main:
            write_json_atomic(self.out / "summary.json", summary)
        return summary


def start(cfg) -> tuple[Path, Path | None]:
    """Start of every training stage, on every rank: join the process group; rank 0 creates and probes the
    output dir, picks what to resume from (``prepare_resume``, which prunes and trims metrics) and saves the
    resolved config, then the other ranks find the same checkpoint; seed every RNG, set the CPU threads."""
    dist.init()
    out, resume_from = Path(cfg.output_dir).expanduser(), None
    if dist.is_main():
        out = prepare_output_dir(cfg.output_dir)
        resume_from = prepare_resume(out, cfg.resume, config_lib.to_dict(cfg))
        (out / "config.yaml").write_text(config_lib.dump(cfg))
    dist.barrier()  # the others look only once rank 0 has settled the directory
    if not dist.is_main():
        resume_from = ckpt.resolve(cfg.resume, out / "checkpoints")
    seed_everything(cfg.seed)
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    return out, resume_from


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def prepare_resume(out: Path, resume: str, config: dict | None = None) -> Path | None:
    """Pick the checkpoint to continue from (None: start fresh) and make ``out/metrics.jsonl`` hold exactly
    its rows (an uninterrupted run's), so rows the crashed process logged after its last checkpoint go; a
    fresh start begins an empty file. Call before opening it."""
    root = Path(out) / "checkpoints"
    path = ckpt.resolve(resume, root)
    if path is None and resume == "auto":
        print(f"resume=auto: no valid checkpoint in {root}; starting fresh")
    elif path is None and (old := ckpt.find_latest(root)) is not None:
        # Training fresh next to them would interleave two runs' checkpoints and a later auto-resume
        # would silently continue the wrong one.
        raise ckpt.CheckpointError(
            f"{root} holds checkpoints of an earlier run (newest: {old.name}); continue it "
            f"with --resume=auto, or start over with another --output_dir (or delete {root})"
        )
    ckpt.prune(root, keep_last=0)  # keeps every valid checkpoint; removes interrupted writes
    metrics, saved = Path(out) / "metrics.jsonl", path and path / "metrics.jsonl"
    if saved and saved.exists():
        tmp = metrics.with_name(metrics.name + ".tmp")
        shutil.copyfile(saved, tmp)
        os.replace(tmp, metrics)
    else:
        metrics.unlink(missing_ok=True)
    if path is not None:
        print(f"resuming from {path}")
        if config is not None and (path / "config.yaml").exists():
            for change in _changes(yaml.safe_load((path / "config.yaml").read_text()), config):
                print(f"  note: config differs from the checkpoint's: {change}")
    return path


def _changes(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            c
            for k in sorted(set(old) | set(new), key=str)
            if k not in ("resume", "output_dir")
            for c in _changes(old.get(k), new.get(k), f"{prefix}{k}.")
        ]
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


class StopRequest:
    """``with StopRequest() as stop:`` SIGINT/SIGTERM set ``stop.signum`` so the loop can finish its step,
    save a checkpoint and exit; a second signal stops at once (KeyboardInterrupt)."""

    def __init__(self):
        self.signum, self._old = None, {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(
            f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
            f"(send it again to quit without saving)",
            flush=True,
        )

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
            return self
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
