"""Padding-free and padded-bin micro-batches against fixed row chunks: the learner's forward+backward
tokens/s on the tiny model over one GRPO-sized batch (CPU, one thread).

    python benchmarks/packing.py            # 48 and 256 new tokens
    python benchmarks/packing.py 128        # other completion budgets
"""

from __future__ import annotations

import json
import sys
import time

import torch

from rlvr import model as model_lib
from rlvr.config import ModelConfig
from rlvr.packing import pack
from rlvr.tiny import __path__ as tiny_path


def benchmark(
    max_new_tokens: int, seqs: int = 128, micro_batch_seqs: int = 64, packed_tokens: int = 1024, repeats: int = 2
) -> dict:
    """Forward+backward tokens/s on the tiny model over one GRPO-sized batch, three ways."""
    model, _ = model_lib.load(ModelConfig(path=f"{tiny_path[0]}/model"))
    g = torch.Generator().manual_seed(0)
    # The tiny recipe's prompts are ~120 tokens; completions spread from 1 token to the budget.
    prompts = [
        torch.randint(1, 384, (int(torch.randint(110, 131, (1,), generator=g)),), generator=g).tolist()
        for _ in range(seqs)
    ]
    comps = [
        torch.randint(1, 384, (int(torch.randint(1, max_new_tokens + 1, (1,), generator=g)),), generator=g).tolist()
        for _ in range(seqs)
    ]
    ids, attn, mask = model_lib.pad_batch(prompts, comps, pad_id=0)
    lengths = attn.sum(-1)
    real_tokens = int(lengths.sum())

    def step(mbs, fn, trim):
        for mb in mbs:
            w = int(lengths[mb].max()) if trim else ids.shape[1]
            logp, m = fn(model, ids[mb, :w], attn[mb, :w], mask[mb, :w], 1.0)
            ((logp * m).sum() / real_tokens).backward()
        model.zero_grad(set_to_none=True)

    ways = {
        # what learn() does now: fixed row chunks of the batch padded to its longest row
        "fixed": (
            [torch.arange(s, min(s + micro_batch_seqs, seqs)) for s in range(0, seqs, micro_batch_seqs)],
            model_lib.completion_logprobs,
            False,
        ),
        # same activation budget (rows x longest), rows of similar length together, each bin trimmed
        "padded_bins": (
            [torch.tensor(b) for b in pack(lengths.tolist(), micro_batch_seqs * ids.shape[1], padded=True)],
            model_lib.completion_logprobs,
            True,
        ),
        # one packed row per bin; on CPU sdpa attends over the whole row, so bins stay short
        "padding_free": (
            [torch.tensor(b) for b in pack(lengths.tolist(), packed_tokens)],
            model_lib.packed_completion_logprobs,
            True,
        ),
    }
    best = {k: float("inf") for k in ways}
    for _ in range(repeats):  # interleaved, best of N: the machine is shared
        for k, (mbs, fn, trim) in ways.items():
            t0 = time.perf_counter()
            step(mbs, fn, trim)
            best[k] = min(best[k], time.perf_counter() - t0)
    padded = {
        k: sum(len(mb) * (int(lengths[mb].max()) if trim else ids.shape[1]) for mb in mbs)
        for k, (mbs, _, trim) in ways.items()
    }
    padded["padding_free"] = real_tokens
    return {
        k: {
            "tokens_per_s": round(real_tokens / best[k]),
            "s": round(best[k], 3),
            "micro_batches": len(ways[k][0]),
            "computed_tokens": padded[k],
        }
        for k in ways
    } | {"real_tokens": real_tokens}


if __name__ == "__main__":
    torch.set_num_threads(1)
    for max_new in [int(a) for a in sys.argv[1:]] or [48, 256]:
        print(json.dumps({"max_new_tokens": max_new, **benchmark(max_new)}))
