"""A few on-policy distillation learner steps (rlvr.rl.learn with a teacher, stage distill) on fixed batches, at any
world size: the entry point tests/test_distill.py launches under torchrun and also calls in-process as the
single-process reference.

    torchrun --standalone --nproc_per_node 2 tests/dist_distill.py OUT_DIR 0,2,3

writes OUT_DIR/distill{S}.json (each step's metrics) and OUT_DIR/distill{S}/ (the consolidated HF checkpoint) for
each ZeRO stage S. Each rank learns on its share of the groups (``dist.shard``) and its teacher, a plain frozen module
on every rank, scores that share in the learner's micro-batches; the loss denominators are global.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from conftest import REPO, TINY_MODEL

from rlvr import checkpoint, dist, model as model_lib
from rlvr.config import load_config
from rlvr.learner import Learner
from rlvr.rl import learn, load_teacher
from rlvr.rollout import Batch, Rollout

GROUPS, G, STEPS = 6, 2, 3  # 3 groups a rank at 2 ranks; micro-batches of 4 rows: 2 on one rank, 1 and a filler
TEACHER = REPO / "rlvr" / "tiny" / "zero_model"


def fixed_batch(step: int) -> Batch:
    """`step`'s rollout, identical on every rank: random prompts and completions with sampler log-probs near the
    base model's typical ones (so the teacher's advantages have both signs), random rewards (unused: pure
    distillation)."""
    g = torch.Generator().manual_seed(8765 + step)
    prompts = [
        torch.randint(1, 384, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(GROUPS)
    ]
    rows = [p for p in prompts for _ in range(G)]
    comps = [torch.randint(1, 384, (int(torch.randint(2, 13, (1,), generator=g)),), generator=g).tolist() for _ in rows]
    logprobs = [(-6.0 + 0.5 * torch.randn(len(c), generator=g)).tolist() for c in comps]
    ro = Rollout(rows, comps, [""] * len(rows), logprobs, [False] * len(rows))
    return Batch(ro, torch.randn(len(rows), generator=g), G)


def config(stage: int):
    over = {
        "model.path": str(TINY_MODEL),
        "distill.teacher": str(TEACHER),
        "rl.micro_batch_seqs": 4,
        "rl.samples_per_prompt": G,
        "rl.prompts_per_step": GROUPS,
        "rl.lr": 1e-3,
        "rl.passes_per_step": 2,
        "deepspeed.zero_stage": stage,
        "sampler.backend": "vllm" if stage == 3 else "hf",  # ZeRO-3 refuses the hf sampler (none runs here)
    }
    return load_config(REPO / "recipes" / "tiny_distill.yaml", over)


def train(stage: int, out: Path) -> list[dict]:
    cfg = config(stage)
    model, tok = model_lib.load(cfg.model)
    teacher = load_teacher(cfg, tok)
    policy = Learner.for_stage(model, cfg.deepspeed, cfg.rl)
    steps = []
    for step in range(STEPS):
        batch = fixed_batch(step)
        mine = [g * G + j for g in dist.shard(range(GROUPS)) for j in range(G)]
        batch = Batch(batch.rollout.select(mine), batch.rewards[mine], G)
        steps.append(learn(policy, None, batch, cfg, 0, step, teacher=teacher))
    checkpoint.save_model(policy, tok, out / f"distill{stage}")
    if dist.is_main():
        (out / f"distill{stage}.json").write_text(json.dumps(steps))
    return steps


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init()
    for st in map(int, sys.argv[2].split(",")):
        train(st, Path(sys.argv[1]))
