"""Token-budget micro-batches for the learner (numba bin packing).

    bins = pack(lengths, max_tokens)                  # list of index lists, each bin sums to <= max_tokens
    bins = pack(lengths, max_tokens, padded=True)     # each bin's rows x longest row <= max_tokens
    python benchmarks/packing.py                      # tokens/s with and without, tiny model, CPU

GRPO uses both: ``rl.micro_batch_tokens`` bins whole groups by tokens, and ``rl.padding_free``
runs each micro-batch as one row through ``rlvr.model.packed_completion_logprobs``.

A GRPO batch has completions from 1 to max_new_tokens long; fixed ``micro_batch_seqs`` chunks pad
every row to the batch's longest. Two ways out, both here:

* padding-free (``pack`` + ``model.packed_completion_logprobs``): a bin's sequences are concatenated into
  one row whose position ids restart at 0 for each sequence. Flash-attention (varlen) then attends
  within each sequence only and computes nothing for padding. transformers also honours restarting
  position ids under sdpa/eager (it builds a block-diagonal causal mask), which is exact but costs
  attention over the whole row, so on CPU it pays off only for short bins.
* padded groups (``pack(..., padded=True)``): rows of similar length share a micro-batch, trimmed to
  their own longest row, so padding shrinks without any attention support.

Sequences longer than ``max_tokens`` get a bin of their own (they cannot be split).

Measured on the tiny model, 2 shared CPU cores, 128 rows of ~120 prompt + 1..N completion tokens,
forward+backward real tokens/s (fixed 64-row chunks / padded bins / padding-free 1024-token rows):
N=48: 5031 / 5802 / 3418; N=256: 2914 / 4871 / 3229 (``python benchmarks/packing.py``). So on CPU sdpa
use padded bins; padding-free is for flash-attention, where the packed row costs no cross-sequence
attention.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _first_fit_decreasing(lengths, max_tokens, padded):
    """lengths (N,) int64 -> bin index of each item (N,), number of bins.

    Items go longest first into the first open bin they fit. A bin's cost is the sum of its lengths,
    or (padded) its item count times its longest length, since padded rows all cost the longest."""
    n = lengths.shape[0]
    order = np.argsort(-lengths, kind="mergesort")  # stable: equal lengths keep input order
    bin_of = np.empty(n, dtype=np.int64)
    used = np.zeros(n, dtype=np.int64)  # at most n bins
    count = np.zeros(n, dtype=np.int64)
    longest = np.zeros(n, dtype=np.int64)
    n_bins = 0
    for k in range(n):
        i = order[k]
        ln = lengths[i]
        chosen = -1
        for b in range(n_bins):
            if padded:
                cost = (count[b] + 1) * max(longest[b], ln)
            else:
                cost = used[b] + ln
            if cost <= max_tokens:
                chosen = b
                break
        if chosen < 0:  # nothing fits (or an over-long item): open a bin
            chosen = n_bins
            n_bins += 1
        bin_of[i] = chosen
        used[chosen] += ln
        count[chosen] += 1
        longest[chosen] = max(longest[chosen], ln)
    return bin_of, n_bins


def pack(lengths, max_tokens: int, padded: bool = False) -> list[list[int]]:
    """First-fit-decreasing bin packing of sequence lengths into bins of at most ``max_tokens``.

    Returns bins of indices into ``lengths`` (ascending within a bin; bins in the order opened, the
    longest sequences first). ``padded``: the budget counts rows x the bin's longest row."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if lens.size == 0:
        return []
    if (lens < 0).any():
        raise ValueError("sequence lengths must be >= 0")
    bin_of, n_bins = _first_fit_decreasing(lens, np.int64(max_tokens), bool(padded))
    bins: list[list[int]] = [[] for _ in range(n_bins)]
    for i, b in enumerate(bin_of.tolist()):
        bins[b].append(i)
    return bins
