"""A few GRPO learner steps on fixed data through rlvr.learner, at any world size: the entry point that
tests/test_distributed.py launches under torchrun and also calls in-process as the single-process
reference.

    torchrun --standalone --nproc_per_node 2 tests/dist_train.py OUT_DIR 0,2,3,2lora

writes OUT_DIR/stage{S}.json (per-step global loss and grad norm; one more step continued and resumed
from saved state) and OUT_DIR/hf_stage{S}/ (the consolidated HF checkpoint) for each ZeRO stage S
(0: plain torch); ``2lora``: stage 2 training LoRA adapters (stage2_lora.json, hf_stage2_lora/: the merged
model, its adapter in adapter/, which the resumed learner loads).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from conftest import REPO

from rlvr import algos, checkpoint, dist, model as model_lib
from rlvr.config import DeepSpeedConfig, LoraConfig, ModelConfig
from rlvr.learner import Learner

# 7 sequences on 2 ranks: 4 and 3, so 2 and 1 micro-batches of 3; the rank with fewer runs a zero-weight one
SEQS, MICRO, STEPS = 7, 3, 4
NAN_STEP = 2  # one rank's micro-batch gets a NaN advantage: every rank must skip this update
# Several LM-head chunks per micro-batch, a different number on each rank (their token counts differ):
# recompute in the backward at every stage, and under ZeRO-3 every rank joins as many head-weight
# gathers as the busiest. The in-process reference uses the same size (tests/test_distributed.py).
HEAD_CHUNK_TOKENS = 4


def fixed_data(step: int):
    """The optimizer batch of `step`, identical on every rank: ids, attention, mask, old log-probs, advantages."""
    g = torch.Generator().manual_seed(1234 + step)
    prompts = [
        torch.randint(1, 384, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(SEQS)
    ]
    comps = [
        torch.randint(1, 384, (int(torch.randint(2, 13, (1,), generator=g)),), generator=g).tolist()
        for _ in range(SEQS)
    ]
    ids, attn, mask = model_lib.pad_batch(prompts, comps, pad_id=0)
    old = -6.0 + 0.5 * torch.randn(SEQS, ids.shape[1] - 1, generator=g)
    adv = torch.randn(SEQS, generator=g)
    if step == NAN_STEP:
        adv[SEQS - 1] = float("nan")
    return ids, attn, mask, old, adv


def one_step(learner: Learner, step: int, agg: str) -> tuple[float, float, float]:
    """One optimizer step on `step`'s batch, this rank's rows of it -> (global loss, grad norm, the loss's
    size: its per-token terms summed in absolute value, which the signed loss cancels)."""
    ids, attn, mask, old, adv = fixed_data(step)
    rows = dist.shard(range(SEQS))  # rank-strided: this rank's sequences of the global batch
    denom = dist.global_sum(algos.loss_denominator(mask[rows, 1:], agg))
    local = size = 0.0
    for i in range(int(dist.global_max(math.ceil(len(rows) / MICRO)))):  # ZeRO: as many backwards on every rank
        mb, weight = rows[i * MICRO : (i + 1) * MICRO], 1.0
        if not mb:
            mb, weight = rows[:MICRO], 0.0
        logp, m = learner.forward(model_lib.completion_logprobs, ids[mb], attn[mb], mask[mb])
        pg, _ = algos.clipped_surrogate(logp, old[mb], adv[mb], 0.2, 0.28)
        loss = algos.masked_sum(pg, m, agg, 12) / denom * weight
        learner.backward(loss)
        local += float(loss.detach())
        size += float(algos.masked_sum(pg.detach().abs(), m, agg, 12) / denom * weight)
    loss, norm, size = dist.global_sum(local), learner.step(), dist.global_sum(size)
    learner.scheduler.step()
    return loss, norm, size


def train(stage: int, out: Path, extra: dict | None = None, agg: str = "token_mean", lora: bool = False) -> dict:
    tag = f"{stage}_lora" if lora else str(stage)

    def make(path):
        if lora:  # the base from the shipped model, the adapter from the checkpoint (or fresh)
            adapter = "" if path == REPO / "rlvr" / "tiny" / "model" else str(path / "adapter")
            cfg = ModelConfig(
                path=str(REPO / "rlvr" / "tiny" / "model"), lora=LoraConfig(r=4, alpha=8, adapter=adapter)
            )
        model, tok = model_lib.load(cfg if lora else ModelConfig(path=str(path)))
        return Learner(
            model,
            DeepSpeedConfig(zero_stage=stage, config=extra or {}),
            lr=5e-3 if lora else 5e-4,
            max_grad_norm=1.0,
            lr_lambda=lambda s: 1.0 / (1 + s),
        ), tok

    torch.manual_seed(0)
    learner, tok = make(REPO / "rlvr" / "tiny" / "model")
    losses, norms, sizes = map(list, zip(*(one_step(learner, step, agg) for step in range(STEPS))))
    checkpoint.save_model(learner, tok, out / f"hf_stage{tag}")
    # Resume: a new learner from the HF checkpoint and the saved optimizer/scheduler state takes the next
    # step exactly as the learner that wrote them does.
    learner.save_state(out / f"state_stage{tag}")
    resumed, _ = make(out / f"hf_stage{tag}")
    resumed.load_state(out / f"state_stage{tag}")
    result = {
        "losses": losses,
        "grad_norms": norms,
        "loss_sizes": sizes,
        "world_size": dist.world_size(),
        "continued": one_step(learner, STEPS, agg),
        "resumed": one_step(resumed, STEPS, agg),
    }
    if dist.is_main():
        (out / f"stage{tag}.json").write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    model_lib.HEAD_CHUNK_TOKENS = HEAD_CHUNK_TOKENS
    dist.init()
    out_dir = Path(sys.argv[1])
    for arg in sys.argv[2].split(","):
        st = int(arg.removesuffix("lora"))
        # ZeRO-3 keeps tensors under 100k elements whole by default; 0 shards every tiny-model tensor
        extra = {"zero_optimization": {"stage3_param_persistence_threshold": 0}} if st == 3 else None
        train(st, out_dir, extra, lora=arg.endswith("lora"))
