"""The LM head in chunks (rlvr.model.head_logprobs) against the straightforward all-at-once head:
same log-probs, entropies and gradients, and no more than one chunk's logits alive at a time."""

import math
import weakref

import pytest
import torch
from conftest import assert_close_norm
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlvr import model as model_lib


def fp64_rel(n: int) -> float:
    """Rounding, relative in norm, of fp64 results that add up n products in another order (chunk by chunk):
    a random walk of eps x sqrt(n). Observed: 1-2 eps, < 0.05 of it; a wrong temperature or a lost gradient ~1."""
    return torch.finfo(torch.float64).eps * math.sqrt(n)


def tiny_model(tie: bool):
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=97,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        tie_word_embeddings=tie,
        max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(cfg).double()  # fp64, so chunked and whole may be compared to ~1e-14
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tie
    return model


def reference_head(model, hidden, targets, temperature=1.0, with_entropy=False, chunk_tokens=None):
    """The head the obvious way: all N rows' logits at once, plain autograd."""
    logq = (model.get_output_embeddings()(hidden) / temperature).log_softmax(-1)  # (N, V)
    logp = logq.gather(-1, targets[:, None]).squeeze(-1)
    return logp, (-(logq.exp() * logq).sum(-1) if with_entropy else None)


def grads(*tensors):
    return [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("chunk", [0, 1, 5, 23, 64])  # all at once, 1, not dividing N=23, exactly N, more than N
def test_head_logprobs_chunked_equals_whole(tie, chunk):
    model = tiny_model(tie)
    hidden = torch.randn(23, 32, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 97, (23,))
    w_logp, w_ent = torch.randn(23, dtype=torch.float64), torch.randn(23, dtype=torch.float64)
    for use_entropy in (True, False):  # entropy in the loss, or computed and left out of it
        out = {}
        for name, fn in (("whole", reference_head), ("chunked", model_lib.head_logprobs)):
            model.zero_grad()
            hidden.grad = None
            logp, ent = fn(model, hidden, targets, 0.7, True, chunk)
            ((logp * w_logp).sum() + use_entropy * (ent * w_ent).sum()).backward()
            out[name] = [logp.detach(), ent.detach()] + grads(hidden, model.get_output_embeddings().weight)
        for what, a, b in zip(("logp", "entropy", "d hidden", "d head"), out["whole"], out["chunked"]):
            assert_close_norm(b, a, fp64_rel(23 * 97), what)  # the head's gradient adds 23 tokens x 97 logits
    logp, ent = model_lib.head_logprobs(model, hidden, targets, 0.7, False, chunk)
    assert ent is None
    assert_close_norm(logp, out["whole"][0], fp64_rel(23 * 97), "logp without entropy")


@pytest.mark.parametrize("tie", [True, False])
def test_grouped_and_completion_logprobs_chunked_equal_whole(tie, monkeypatch):
    model = tiny_model(tie)
    prompts = [[5, 6, 7], [5, 6, 7], [8, 9], [8, 9]]  # groups of 2
    completions = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10, 11], [12]]  # 12 tokens
    ids, attn, mask = model_lib.pad_batch(prompts, completions, pad_id=0)
    calls = {
        "grouped": lambda c: model_lib.grouped_logprobs(model, prompts, completions, 2, 0, 0.8, True, c),
        "completion": lambda c: model_lib.completion_logprobs(model, ids, attn, mask, 0.8, True, c),
    }
    for name, call in calls.items():
        out = {}
        for head in ("whole", "chunked"):
            with monkeypatch.context() as m:
                if head == "whole":
                    m.setattr(model_lib, "head_logprobs", reference_head)
                model.zero_grad()
                logp, msk, ent = call(5)
                ((logp * msk).sum() - 0.3 * (ent * msk).sum()).backward()
                out[head] = [logp.detach(), ent.detach()] + grads(*model.parameters())  # lm_head/embedding included
        whats = ["logp", "entropy"] + [f"d {n}" for n, _ in model.named_parameters()]
        for what, a, b in zip(whats, out["whole"], out["chunked"]):
            assert_close_norm(b, a, fp64_rel(12 * 97), f"{name}: {what}")  # 12 tokens x 97 logits


def test_grouped_logprobs_all_empty_completions_gives_masked_zeros():
    """A micro-batch whose completions are all empty (a sampler that returns no tokens) scores to an
    all-zero mask, and the loss over it still backpropagates (to zero gradients)."""
    model = tiny_model(tie=True)
    logp, mask, ent = model_lib.grouped_logprobs(model, [[5, 6], [5, 6]], [[], []], 2, 0, 1.0, True)
    assert logp.shape == mask.shape == ent.shape == (2, 1) and not mask.any() and not logp.any()
    (logp * mask).sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_one_chunk_of_logits_alive_at_a_time():
    model = tiny_model(tie=True)
    alive, most = [], [0]

    def on_logits(module, args, logits):  # the head's output: count earlier chunks' logits still in memory
        most[0] = max(most[0], sum(r() is not None for r in alive))
        alive.append(weakref.ref(logits))

    model.get_output_embeddings().register_forward_hook(on_logits)
    hidden = torch.randn(23, 32, dtype=torch.float64, requires_grad=True)
    logp, ent = model_lib.head_logprobs(model, hidden, torch.randint(0, 97, (23,)), 1.0, True, 5)
    assert len(alive) == 5 and most[0] == 0  # forward: each chunk's logits freed before the next
    (logp.sum() + ent.sum()).backward()
    assert len(alive) == 10 and most[0] == 0  # backward: recomputed one chunk at a time
