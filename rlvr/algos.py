"""The algorithm math: pure tensor functions, no state, no config objects.

Shapes: B sequences, G samples per prompt (B = prompts x G), T completion tokens, V vocabulary.
Masks are 1.0 on completion tokens that count and 0.0 on padding. Every function here is tested
against hand-computed values in tests/test_algos.py.

References: GRPO (Shao et al. 2024), Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like
training"), DAPO (Yu et al. 2025: clip-higher, dynamic sampling, token-level loss, overlong shaping),
KL estimators k1/k2/k3 (Schulman 2020, "Approximating KL divergence"), DPO (Rafailov et al. 2023).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_advantages(rewards: torch.Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """rewards (B,) ordered group by group -> advantages (B,).

    GRPO: (r - group mean) / (group std + eps). Dr. GRPO (normalize_std=False): r - group mean,
    since dividing by the std up-weights groups that are nearly all right or all wrong.
    """
    r = rewards.view(-1, group_size)  # (P, G)
    adv = r - r.mean(dim=1, keepdim=True)
    if normalize_std:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)  # unbiased std, as in GRPO's reference code
    return adv.view(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards (B,) -> (P,) bool: groups whose rewards are not all equal (DAPO dynamic sampling).
    A group where every sample scores the same has zero advantage everywhere and teaches nothing."""
    r = rewards.view(-1, group_size)
    return (r.max(dim=1).values - r.min(dim=1).values) > 0


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO soft overlong punishment: lengths (B,) -> reward adjustment (B,), <= 0.

    0 up to max_len - buffer, then falling linearly to -penalty at max_len."""
    over = (lengths.float() - (max_len - buffer)).clamp(min=0)
    return -penalty * (over / max(buffer, 1)).clamp(max=1.0)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits (..., V) predicting tokens (...) -> log-probabilities (...) under softmax(logits / T).

    The learner divides by the sampling temperature so its ratio compares the same distribution the
    sampler drew from."""
    logits = logits.float() / temperature
    return torch.gather(logits.log_softmax(-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits (..., V) -> entropy of softmax(logits / T) (...), in nats."""
    logp = (logits.float() / temperature).log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


class _LogprobEntropy(torch.autograd.Function):
    """``token_logprobs`` and ``entropy`` in one pass with a hand-written backward. Each (N, V) pass costs
    as much as the head's matmul on a GPU (the logits of 1024 tokens x 151,936 are 0.6 GB in fp32), so
    this counts them: the forward is one fused log-softmax kernel that reads the logits and writes the
    fp32 log-probabilities, which it saves; the backward is three (exp, scale, downcast), the
    temperature folded into the scale. Autograd through ``token_logprobs`` and ``entropy`` makes about
    ten. The entropy costs nothing in the backward unless the loss uses it. ``rlvr.model.head_logprobs``
    runs its chunks under activation checkpointing, so the saved fp32 tensor lives for one chunk only."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature, with_entropy):
        ctx.set_materialize_grads(False)  # an unused entropy (or logp) gets None, not an (N,) of zeros
        logq = _log_softmax(logits, temperature)  # (N, V) fp32, log p
        ctx.save_for_backward(logq, tokens)
        ctx.temperature, ctx.dtype = temperature, logits.dtype
        logp = logq.gather(-1, tokens[:, None]).squeeze(-1)  # (N,)
        return logp, (-logq.exp().mul_(logq).sum(-1) if with_entropy else None)

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        # With u = logits / T: d logp_t/du = onehot(t) - p and dH/du = -p (log p + H), so
        # dL/dlogits = (-p (g_logp + g_ent (log p + H)) + g_logp onehot(t)) / T, built in place.
        logq, tokens = ctx.saved_tensors  # logq stays intact: a retained graph can run backward again
        T = ctx.temperature
        g_logp = logq.new_zeros(len(logq)) if g_logp is None else g_logp  # (N,)
        p = logq.exp()  # (N, V)
        if g_ent is None:
            grad = p.mul_(-g_logp[:, None] / T)
        else:
            ent = -torch.einsum("nv,nv->n", p, logq)  # (N,), with no (N, V) temporary
            grad = p.mul_((logq + ent[:, None]).mul_(g_ent[:, None]).add_(g_logp[:, None])).mul_(-1 / T)
        grad.scatter_add_(-1, tokens[:, None], g_logp[:, None] / T)
        return grad.to(ctx.dtype), None, None, None


def _log_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """fp32 log-softmax of logits / T (fp64 stays fp64, for gradcheck). At T = 1 one kernel reads the
    logits in their own dtype and upcasts in registers; a bf16 division by T first would round."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    if temperature == 1.0:
        return torch.log_softmax(logits, -1, dtype=dtype)
    return (logits.to(dtype) / temperature).log_softmax(-1)


def token_logprobs_entropy(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                           with_entropy: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logits (N, V), tokens (N,) -> (token_logprobs (N,), entropy (N,) or None), both differentiable,
    equal to ``token_logprobs`` and ``entropy`` in fewer passes over the (N, V) logits."""
    return _LogprobEntropy.apply(logits, tokens, temperature, with_entropy)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi: (B, T) -> (B, T).

    k1 = log r' where r' = pi/ref (unbiased, high variance, can be negative); k2 = (log r')^2 / 2;
    k3 = (ref/pi) - 1 - log(ref/pi) (unbiased, always >= 0, low variance; GRPO's choice)."""
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.exp(-log_ratio) - 1 + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1, k2 or k3")


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped policy-gradient loss per token, with DAPO's separate clip range.

    logp, old_logp (B, T); advantages (B,) -> (loss (B, T), clipped (B, T) float 0/1).
    ratio is clipped to [1 - clip_low, 1 + clip_high]; clip_high > clip_low lets unlikely tokens with
    positive advantage grow faster (clip-higher), which keeps entropy from collapsing."""
    ratio = torch.exp(logp - old_logp)  # (B, T)
    adv = advantages.unsqueeze(-1)  # (B, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def truncated_is_weight(learner_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS, Yao et al. 2025) for a sampler whose probabilities drift from
    the learner's (vLLM's kernels, bf16): logp's (B, T) -> min(p_learner / p_sampler, cap) (B, T), no
    gradient. The cap bounds the variance a near-zero sampler probability would bring."""
    return torch.exp(learner_logp - sampler_logp).clamp(max=cap).detach()


def loss_denominator(mask: torch.Tensor, mode: str) -> float:
    """The normaliser of ``masked_sum`` over a whole optimizer batch (all micro-batches, all ranks):
    tokens for token_mean, sequences for the sequence-mean modes."""
    return float(mask.sum()) if mode == "token_mean" else float(mask.shape[0])


def masked_sum(per_token: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """per_token, mask (B, T) -> scalar numerator; divide by ``loss_denominator`` of the full batch.

    token_mean: every token of the batch weighs the same (DAPO). seq_mean_token_mean: each sequence's
    mean, then the mean over sequences (GRPO's original; favours short sequences).
    seq_mean_token_sum_norm: token sum / a constant max_len per sequence (Dr. GRPO: no length bias).
    Splitting the sum from the denominator lets micro-batches and ranks add up to the exact loss."""
    if mode == "token_mean":
        return (per_token * mask).sum()
    if mode == "seq_mean_token_mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()
    if mode == "seq_mean_token_sum_norm":
        if not max_len:
            raise ValueError("seq_mean_token_sum_norm needs max_len (the generation budget)")
        return (per_token * mask).sum() / max_len
    raise ValueError(f"unknown loss aggregation {mode!r}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """The loss of one whole batch: masked_sum / loss_denominator."""
    return masked_sum(per_token, mask, mode, max_len) / loss_denominator(mask, mode)


def dpo_loss(
    chosen_logp: torch.Tensor, rejected_logp: torch.Tensor, ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor, beta: float, kind: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence log-probabilities (B,) -> (loss (B,), chosen reward (B,), rejected reward (B,)).

    sigmoid: -log sigmoid(beta * margin) (DPO). ipo: (margin - 1 / (2 beta))^2 (Azar et al. 2023),
    which does not push the margin to infinity on deterministic preferences. Pass length-normalised
    log-probabilities (mean per token) for the length-normalised variant."""
    chosen_r = chosen_logp - ref_chosen_logp
    rejected_r = rejected_logp - ref_rejected_logp
    margin = chosen_r - rejected_r
    if kind == "sigmoid":
        loss = -F.logsigmoid(beta * margin)
    elif kind == "ipo":
        loss = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {kind!r}; choose sigmoid or ipo")
    return loss, beta * chosen_r.detach(), beta * rejected_r.detach()


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Reward-model loss: scores (B,) -> (B,) = -log sigmoid(chosen - rejected) (InstructGPT)."""
    return -F.logsigmoid(chosen_scores - rejected_scores)


def sequence_logprobs(logp: torch.Tensor, mask: torch.Tensor, length_normalize: bool = False) -> torch.Tensor:
    """Per-token log-probabilities (B, T) and mask (B, T) -> log-probability of each response (B,):
    the sum over its tokens, or the mean per token (length-normalised, so long replies are not
    penalised just for having more tokens)."""
    total = (logp * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if length_normalize else total


def preference_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Scores (B,) -> fraction of pairs where chosen scores higher, a tie counting half: a model that
    cannot tell the two apart (e.g. a DPO policy equal to its reference) scores chance, 0.5."""
    return ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean()
