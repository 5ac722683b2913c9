"""A few PPO learner steps (policy and critic, rlvr.rl.learn with rl.advantage: gae) on a fixed batch, at any
world size: the entry point tests/test_distributed.py launches under torchrun and also calls in-process as
the single-process reference.

    torchrun --standalone --nproc_per_node 2 tests/dist_ppo.py OUT_DIR 0,2

writes OUT_DIR/ppo{S}.json (each step's metrics) and OUT_DIR/ppo{S}_{policy,critic}/ (the consolidated HF
checkpoints) for each ZeRO stage S. Each rank learns on its share of the groups (``dist.shard``), as the
RL loop's ranks do; the loss denominators are global.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from conftest import REPO, TINY_MODEL

from rlvr import checkpoint, dist, model as model_lib
from rlvr.config import ModelConfig, load_config
from rlvr.learner import Learner
from rlvr.rl import learn
from rlvr.rollout import Batch, Rollout

GROUPS, G, STEPS = 6, 2, 3  # 3 groups a rank at 2 ranks; micro-batches of 4 rows: 2 on one rank, 1 and a filler


def fixed_batch(step: int) -> Batch:
    """`step`'s rollout, identical on every rank: random prompts and completions, the sampler's log-probs a
    little off the learner's (so ratios move and clip), random rewards."""
    g = torch.Generator().manual_seed(4321 + step)
    prompts = [
        torch.randint(1, 384, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(GROUPS)
    ]
    rows = [p for p in prompts for _ in range(G)]
    comps = [torch.randint(1, 384, (int(torch.randint(2, 13, (1,), generator=g)),), generator=g).tolist() for _ in rows]
    logprobs = [(-6.0 + 0.5 * torch.randn(len(c), generator=g)).tolist() for c in comps]
    ro = Rollout(rows, comps, [""] * len(rows), logprobs, [False] * len(rows))
    return Batch(ro, torch.randn(len(rows), generator=g), G)


def initial_models():
    """The policy and the critic (the tiny model with a new value head, seeded: the same on every rank)."""
    torch.manual_seed(0)
    return model_lib.load(ModelConfig(path=str(TINY_MODEL)))[0], model_lib.load_scorer(str(TINY_MODEL))[0]


def train(stage: int, out: Path) -> list[dict]:
    cfg = load_config(
        REPO / "recipes" / "tiny_zero.yaml",
        {
            "rl.advantage": "gae",
            "rl.micro_batch_seqs": 4,
            "rl.samples_per_prompt": G,
            "rl.prompts_per_step": GROUPS,
            "rl.lr": 1e-3,
            "rl.critic.lr": 1e-3,
            "rl.passes_per_step": 2,
            "deepspeed.zero_stage": stage,
        },
    )
    policy_model, critic_model = initial_models()
    policy = Learner.for_stage(policy_model, cfg.deepspeed, cfg.rl)
    critic = Learner.for_stage(critic_model, cfg.deepspeed, cfg.rl.critic, STEPS)
    steps = []
    for step in range(STEPS):
        batch = fixed_batch(step)
        mine = [g * G + j for g in dist.shard(range(GROUPS)) for j in range(G)]
        batch = Batch(batch.rollout.select(mine), batch.rewards[mine], G)
        steps.append(learn(policy, None, batch, cfg, 0, step, critic))
    tok = model_lib.load(cfg.model)[1]
    checkpoint.save_model(policy, tok, out / f"ppo{stage}_policy")
    checkpoint.save_model(critic, tok, out / f"ppo{stage}_critic")
    if dist.is_main():
        (out / f"ppo{stage}.json").write_text(json.dumps(steps))
    return steps


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init()
    for st in map(int, sys.argv[2].split(",")):
        train(st, Path(sys.argv[1]))
