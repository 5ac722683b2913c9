"""Next-token loss on encoded rows, the SFT loop's body: one optimizer step over a step's rows, and the held-out
loss. ``rlvr.sft`` fine-tunes on a dataset's chats with it, ``rlvr.rejection_sampling`` on the policy's own best
samples.

    rows = data_lib.make_rows(data_lib.encode_chats(convs, tok, cfg.data), packing, max_len, seed)
    metrics = sft_step(learner, rows, stream.take(seqs_per_step), micro_batch_seqs, tok.pad_token_id)
    loss = heldout_loss(learner.module, test_rows, tok.pad_token_id, micro_batch_seqs)

A row is a list of examples, each (token ids, loss mask): one example, or several packed
(``rlvr.data.make_rows``); only tokens with mask 1 are targets.
"""

from __future__ import annotations

import torch

from rlvr import data as data_lib, dist, model as model_lib
from rlvr.learner import micro_batches


def sft_step(learner, rows: list, idx: list[int], micro: int, pad_id: int) -> dict:
    """One optimizer step on rows ``idx`` (the same list on every rank, which trains on its ``dist.shard``) in
    micro-batches of ``micro`` rows -> ``loss`` (per target token), ``grad_norm`` (not finite: the update was
    skipped on every rank) and ``tokens`` (target tokens, all ranks)."""
    micro_rows = [(data_lib.collate([rows[i] for i in mb], pad_id), w) for mb, w in micro_batches(idx, micro)]
    # Token mean over the whole optimizer step on all ranks: every target token weighs the same.
    n_tok = dist.global_sum(sum(w * float(mb[3][:, 1:].sum()) for mb, w in micro_rows))
    total = 0.0
    for mb, w in micro_rows:
        loss, _ = learner.forward(model_lib.nll_sum, *mb)
        learner.backward(loss * w / max(n_tok, 1.0))
        total += w * loss.item()
    grad_norm = learner.step()
    return {"loss": dist.global_sum(total) / max(n_tok, 1.0), "grad_norm": grad_norm, "tokens": n_tok}


@torch.no_grad()
def heldout_loss(model, rows: list, pad_id: int, micro: int) -> float:
    """Mean next-token loss per target token of ``rows`` (every rank computes all of it, whole weights)."""
    was = model.training
    model.eval()
    total, n = 0.0, 0.0
    for s in range(0, len(rows), micro):
        loss, k = model_lib.nll_sum(model, *data_lib.collate(rows[s : s + micro], pad_id))
        total, n = total + loss.item(), n + k
    model.train(was)
    return total / max(n, 1.0)
