"""Tests of rlvr.packing: numba first-fit-decreasing bins and the padding-free forward.

python -m pytest tests/test_packing.py
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO, TINY_MODEL, assert_close_norm
from hypothesis import given, settings, strategies as st

from rlvr import model as model_lib, packing
from rlvr.config import ModelConfig


def fp32_rel(tokens: int, width: int = 384) -> float:
    """Relative rounding, in norm, of fp32 results that add up `tokens` x `width` (the MLP's) products: other
    shapes or SIMD widths round in another order, a random walk of eps x sqrt(n). Healthy runs: <= 0.12 of it."""
    return torch.finfo(torch.float32).eps * math.sqrt(tokens * width)


def test_pack_hand_computed():
    # longest first: 8 -> bin0, 7 -> bin1, 5 -> bin2, 3 -> bin1 (10), 2 -> bin0 (10), 1 -> bin2 (6)
    assert packing.pack([5, 3, 8, 2, 7, 1], 10) == [[2, 3], [1, 4], [0, 5]]
    # padded cost is rows x longest: 3 joins 5 (2 x 5 = 10), 2 cannot join it (3 x 5), 1 joins 2
    assert packing.pack([5, 3, 8, 2, 7, 1], 10, padded=True) == [[2], [4], [0, 1], [3, 5]]


def test_pack_edges():
    assert packing.pack([], 10) == []
    assert packing.pack([12, 3, 4], 10) == [[0], [1, 2]]  # over-long: a bin of its own, not an error
    assert packing.pack([0, 0, 4], 4) == [[0, 1, 2]]
    with pytest.raises(ValueError):
        packing.pack([1, 2], 0)
    with pytest.raises(ValueError):
        packing.pack([1, -2], 8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 300), max_size=200), st.integers(1, 512), st.booleans())
def test_pack_is_a_partition_within_budget(lengths, max_tokens, padded):
    bins = packing.pack(lengths, max_tokens, padded=padded)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(b and b == sorted(b) for b in bins)
    for b in bins:
        cost = len(b) * max(lengths[i] for i in b) if padded else sum(lengths[i] for i in b)
        assert cost <= max_tokens or len(b) == 1
    if not padded:
        # first fit leaves at most one bin half empty or less, so it needs < 2 x the volume bound + 1
        fits = [n for n in lengths if n <= max_tokens]
        n_fit_bins = sum(1 for b in bins if not (len(b) == 1 and lengths[b[0]] > max_tokens))
        assert n_fit_bins <= 2 * math.ceil(sum(fits) / max_tokens) + 1


@pytest.fixture(scope="module")
def tiny():
    model, _ = model_lib.load(ModelConfig(path=str(TINY_MODEL)))
    return model


def _rows(seed, n):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    prompts = [torch.randint(1, 384, (rnd(3, 30),), generator=g).tolist() for _ in range(n)]
    comps = [torch.randint(1, 384, (rnd(1, 25),), generator=g).tolist() for _ in range(n)]
    return model_lib.pad_batch(prompts, comps, pad_id=0)


def test_packed_forward_matches_padded(tiny):
    ids, attn, mask = _rows(0, 7)
    ref = model_lib.completion_logprobs(tiny, ids, attn, mask, 0.7, with_entropy=True)
    got = model_lib.packed_completion_logprobs(tiny, ids, attn, mask, 0.7, with_entropy=True)
    assert torch.equal(got[1], ref[1])  # the same mask
    rel = fp32_rel(int(attn.sum(1).max()))  # a token's log-prob attends over its row and runs the MLPs
    assert_close_norm(got[0], ref[0], rel, "log-probs")
    assert_close_norm(got[2], ref[2], rel, "entropies")
    # Sequences must not see each other: changing row 0 leaves the others' log-probs untouched.
    ids2 = ids.clone()
    ids2[0, :2] = (ids2[0, :2] + 1) % 384
    moved = model_lib.packed_completion_logprobs(tiny, ids2, attn, mask)[0]
    base = model_lib.packed_completion_logprobs(tiny, ids, attn, mask)[0]
    assert (moved[0] - base[0]).norm() > 1e-3 * base[0].norm()  # row 0's own log-probs did move
    # The others' inputs and shapes are unchanged, so is their rounding: exact here, eps in norm allows a kernel
    # that rounds by value. Attending across sequences moves them by ~5e-3 of their norm.
    assert_close_norm(moved[1:], base[1:], torch.finfo(torch.float32).eps, "the other rows' log-probs")


def test_packed_gradients_match_padded(tiny):
    ids, attn, mask = _rows(1, 5)
    grads = []
    for fn in (model_lib.completion_logprobs, model_lib.packed_completion_logprobs):
        tiny.zero_grad(set_to_none=True)
        logp, m = fn(tiny, ids, attn, mask, 1.0)
        (logp * m).sum().backward()
        grads.append([p.grad.clone() for p in tiny.parameters()])
    tiny.zero_grad(set_to_none=True)
    for (name, _), a, b in zip(tiny.named_parameters(), *grads):
        assert_close_norm(b, a, fp32_rel(int(attn.sum())), name)  # a gradient sums over every token


def test_padded_bins_cut_padding():
    # A GRPO-like batch: completions from 1 to 48 tokens after ~30-token prompts.
    g = torch.Generator().manual_seed(0)
    lengths = (30 + torch.randint(1, 49, (128,), generator=g)).tolist()
    budget = 16 * max(lengths)
    bins = packing.pack(lengths, budget, padded=True)
    padded_cost = sum(len(b) * max(lengths[i] for i in b) for b in bins)
    fixed_cost = len(lengths) * max(lengths)  # micro_batch_seqs chunks of the globally padded batch
    assert padded_cost < 0.85 * fixed_cost
    assert all(len(b) * max(lengths[i] for i in b) <= budget for b in bins)


@pytest.mark.parametrize(
    "common, overrides",
    [
        ({}, {"rl.micro_batch_tokens": 300}),  # padded bins of whole groups
        ({}, {"rl.padding_free": True}),  # each 8-sequence micro-batch as one padding-free row
        ({}, {"rl.padding_free": True, "rl.micro_batch_tokens": 300}),  # padding-free bins by tokens
        # the KL reference is scored in the same whole-group bins, even with micro_batch_seqs below the group
        ({"rl.beta": 0.1, "rl.micro_batch_seqs": 2}, {"rl.micro_batch_tokens": 300}),
        ({"rl.tis_cap": 2.0}, {"rl.padding_free": True, "rl.micro_batch_tokens": 300}),  # TIS's extra forward
        ({"rl.beta": 0.1}, {"rl.share_prompt": False}),  # every row whole (prompt included), the reference too
    ],
)
def test_grpo_micro_batching_changes_the_split_not_the_update(common, overrides, tiny_overrides, monkeypatch):
    """One GRPO learn on one sampled batch: token-budget bins and padding-free rows give the loss,
    gradient norm and updated weights of plain fixed-size micro-batches, in a different number of
    forward/backward passes."""
    from rlvr import data as data_lib
    from rlvr.config import load_config
    from rlvr.learner import Learner
    from rlvr.rl import advantages, learn, sample_and_score
    from rlvr.sampler import make_sampler

    base = {
        **tiny_overrides,
        "rl.prompts_per_step": 4,
        "rl.samples_per_prompt": 4,
        "rl.micro_batch_seqs": 8,
        "rl.lr": 1e-3,
        **common,
    }
    runs, calls = [], []
    for name in ("packed_completion_logprobs", "completion_logprobs"):  # the whole-row paths, spied on
        fn = getattr(model_lib, name)
        monkeypatch.setattr(model_lib, name, lambda *a, _f=fn, _n=name, **k: (calls.append(_n), _f(*a, **k))[1])
    for over in ({}, overrides):
        cfg = load_config(REPO / "recipes" / "tiny_zero.yaml", {**base, **over})
        model, tok = model_lib.load(cfg.model)
        ref_model = model_lib.load(cfg.model)[0].eval().requires_grad_(False) if cfg.rl.beta else None
        train_set = data_lib.load_prompt_set(cfg.data.train, "train", cfg.data, tok, limit=16)
        sampler = make_sampler(cfg.sampler, cfg.model, model, tok)
        batch, _ = sample_and_score(cfg, sampler, data_lib.PromptStream(len(train_set), 0), train_set, 1)
        learner = Learner(model, cfg.deepspeed, lr=cfg.rl.lr)
        passes, grads, w0 = [], [], [p.detach().clone() for p in model.parameters()]
        backward, step = learner.backward, learner.step
        learner.backward = lambda loss, passes=passes, backward=backward: (passes.append(1), backward(loss))
        learner.step = lambda grads=grads, model=model, step=step: (
            grads.append([p.grad.clone() for p in model.parameters()]),
            step(),
        )[1]
        metrics = learn(learner, ref_model, batch, cfg, sampler.pad_id, 1)
        runs.append((metrics, len(passes), grads, w0, [p.detach().clone() for p in model.parameters()]))
    (ref, ref_passes, ref_g, w0, ref_w), (got, got_passes, got_g, _, got_w) = runs
    assert ref["grad_norm"] > 0 and ref_passes == 16 // base["rl.micro_batch_seqs"]
    # TIS and the KL reference: a no-grad forward of each micro-batch too
    forwards = got_passes * (2 if common.get("rl.tis_cap") or common.get("rl.beta") else 1)
    assert calls.count("packed_completion_logprobs") == (forwards if overrides.get("rl.padding_free") else 0)
    assert calls.count("completion_logprobs") == (forwards if overrides.get("rl.share_prompt") is False else 0)
    if "rl.micro_batch_tokens" in overrides and ref_passes == 2:
        assert got_passes > ref_passes  # 16 sequences of ~60-90 tokens: several 300-token bins
    # The update: one optimizer step's accumulated gradient, per tensor, its norm, the losses and entropy.
    ro, mask = batch.rollout, batch.token_mask()
    adv = advantages(batch, cfg, mask)[0]  # (B, Tc)
    n = torch.tensor([len(c) for c in ro.completion_ids])
    rel = fp32_rel(sum(map(len, ro.prompt_ids)) + int(n.sum()))  # every token of the batch adds in
    assert len(ref_g) == len(got_g) == 1
    names = [name for name, _ in model.named_parameters()]
    for name, a, b in zip(names, ref_g[0], got_g[0]):
        assert_close_norm(b, a, rel, f"gradient of {name}")
    assert_close_norm(got["grad_norm"], ref["grad_norm"], rel, "grad_norm")
    assert_close_norm(got["entropy"], ref["entropy"], rel, "entropy")  # a mean of positive terms
    # The losses are signed sums of -A x ratio (+ beta x KL) per token that cancel: bound them by those terms' size.
    size = float((adv.abs() * mask).sum() / mask.sum()) + cfg.rl.beta * ref.get("kl", 0.0)
    for k in ("loss/total", "loss/pg"):
        assert_close_norm(got[k], ref[k], rel, k, scale=size)
    # Learner and sampler log-probs of the same tokens differ by a forward's rounding (a shifted column: ~1), and
    # k3 = e^-x - 1 + x of a rounding-sized x is the rounding of 1, one eps (a wrong reference row: ~1e-1).
    lp = torch.tensor([x for row in ro.logprobs for x in row]).abs().mean().item()
    for m in (ref, got):
        assert m["mismatch/logprob_abs"] <= fp32_rel(max(map(len, ro.prompt_ids)) + int(n.max())) * lp, m
        assert abs(m.get("kl", 0.0)) <= torch.finfo(torch.float32).eps, m
    # Adam's first step is lr g / (|g| + 1e-8): rounding moves the update of an element with g ~ 1e-8 by up to
    # 2 lr, so updates are compared in norm, to 1e-2 (one element flipped among 4 x 10^4; a lost micro-batch: ~1).
    for name, a, b, w in zip(names, ref_w, got_w, w0):
        assert_close_norm(b - w, a - w, 1e-2, f"update of {name}")
