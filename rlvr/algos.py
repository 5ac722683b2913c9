"""The algorithm math: pure tensor functions, no state, no config objects.

Shapes: B sequences, G samples per prompt (B = prompts x G), T completion tokens, V vocabulary.
Masks are 1.0 on completion tokens that count and 0.0 on padding. Every function here is tested
against hand-computed values in tests/test_algos.py, tests/test_algos_pg.py and tests/test_distill.py.

Advantage estimators, chosen by name from ``ADVANTAGES``, share one signature:

    advantages, returns = ADVANTAGES[name](rewards, mask, group_size=G, values=None, kl=None, kl_coef=0.0,
                                           gamma=1.0, lam=1.0, whiten=False, reduce_sum=None)

rewards (B,), one per sequence, ordered group by group; mask (B, T). Out: advantages (B, T), zero on padding
(a sequence-level advantage is copied onto each of its tokens), and returns (B, T), the critic's regression
target, or None for the estimators without a critic. grpo, drgrpo and rloo are sequence-level: they read
group_size only, and a kl_coef raises (their KL penalty belongs in the loss). ``TOKEN_LEVEL_ADVANTAGES``
(reinforce_pp, reinforce_pp_baseline, gae) fold kl (B, T), a per-token KL estimate against the reference,
into the reward as -kl_coef * kl (``token_rewards``), discount with gamma (and lam, gae's), and whiten over
the batch's valid tokens (REINFORCE++ always, gae when whiten); reduce_sum (e.g. ``dist.all_reduce_sum``)
makes that whitening span every rank's tokens. ``ADVANTAGES_WITH_CRITIC`` (gae) need values (B, T).

``distill_advantages`` is on-policy distillation's per-token advantage: (B, T) log-probabilities of the student and
a teacher -> the reverse KL's one-sample estimate, negated, optionally plus a verifier's advantages.

Policy losses, chosen by name from ``POLICY_LOSSES``, share one signature:

    per_token, clipped = POLICY_LOSSES[name](logp, old_logp, advantages, mask, clip_low=..., clip_high=...)

all (B, T) -> per-token loss (B, T) and clipped (B, T) 0/1 float, both zero on padding, the loss then
aggregated by ``masked_sum`` / ``loss_denominator`` in one of ``POLICY_LOSS_AGGREGATIONS[name]``.

Rejection sampling's selection rules, chosen by name from ``KEEP_RULES``, share one signature:

    keep = KEEP_RULES[name](rewards, eligible, k=..., threshold=...)

rewards (P, N), N samples of each of P prompts; eligible (P, N) bool, the samples that may be kept at all.
Out: keep (P, N) bool.

References: GRPO (Shao et al. 2024), Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like
training"), DAPO (Yu et al. 2025: clip-higher, dynamic sampling, token-level loss, overlong shaping),
KL estimators k1/k2/k3 (Schulman 2020, "Approximating KL divergence"), DPO (Rafailov et al. 2023),
PPO (Schulman et al. 2017), GAE (Schulman et al. 2016), InstructGPT (Ouyang et al. 2022), RLOO
(Ahmadian et al. 2024, "Back to basics"), REINFORCE++ (Hu 2025), GSPO (Zheng et al. 2025, "Group
Sequence Policy Optimization"), CISPO (MiniMax 2025, "MiniMax-M1"), on-policy distillation (Agarwal et al. 2024,
"On-Policy Distillation of Language Models" (GKD); Lu & Thinking Machines 2025, "On-Policy Distillation").
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F


def group_advantages(
    rewards: torch.Tensor, group_size: int, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
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


def _per_token(advantages: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1), broadcasting over tokens; (B, T) unchanged. Never lets a (B,) broadcast along T."""
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def leave_one_out_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): rewards (B,) -> r_i - mean of the group's other G - 1 rewards (B,),
    which equals G / (G - 1) (r_i - group mean). A baseline that excludes the sample itself keeps the
    policy gradient unbiased."""
    if group_size < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    r = rewards.view(-1, group_size)  # (P, G)
    others = (r.sum(dim=1, keepdim=True) - r) / (group_size - 1)  # (P, G)
    return (r - others).view(-1)


def token_rewards(
    rewards: torch.Tensor, mask: torch.Tensor, kl: torch.Tensor | None = None, kl_coef: float = 0.0
) -> torch.Tensor:
    """rewards (B,), mask (B, T), kl (B, T) -> per-token rewards (B, T), zero on padding: the sequence's
    reward on its last valid token, minus kl_coef * kl on every token (InstructGPT's shaping: the per-token
    KL penalty keeps the policy near its reference where the reward model cannot judge it)."""
    T = mask.shape[1]
    last = (torch.arange(T, device=mask.device) * (mask > 0)).argmax(-1)  # (B,) index of the last valid token
    r = F.one_hot(last, T).to(rewards.dtype) * rewards[:, None]  # (B, T)
    if kl is not None:
        r = r - kl_coef * kl
    return r * mask


@torch.no_grad()
def gae(
    token_r: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016): per-token rewards, values, mask (B, T) ->
    (advantages (B, T), returns (B, T)), zero on padding, without gradient.

    delta_t = r_t + gamma V_{t+1} - V_t, A_t = sum_l (gamma lam)^l delta_{t+l}, returns = A + V (the
    critic's target). The recursion runs over valid tokens only: V past a sequence's last valid token is
    0 (the episode ends there), and a padded position hands its successor's value and advantage through.
    With values 0 and lam 1, A is the discounted reward-to-go. The recursion is sequential, hence the loop."""
    valid = mask > 0  # (B, T)
    next_v = next_a = token_r.new_zeros(token_r.shape[0])  # (B,)
    adv = []
    for t in reversed(range(mask.shape[1])):
        a = token_r[:, t] + gamma * next_v - values[:, t] + gamma * lam * next_a  # (B,)
        next_v = torch.where(valid[:, t], values[:, t], next_v)
        next_a = torch.where(valid[:, t], a, next_a)
        adv.append(next_a)
    adv = torch.stack(adv[::-1], dim=1) * mask  # (B, T)
    return adv, (adv + values) * mask


def _masked_mean_var(x: torch.Tensor, mask: torch.Tensor, reduce_sum=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance of x (B, T) over valid tokens; reduce_sum sums a tensor over ranks.
    Two passes (mean, then squared deviations), so a large mean costs no precision."""
    total = reduce_sum or (lambda t: t)
    n, s = total(torch.stack([mask.sum(), (x * mask).sum()]))
    n = n.clamp(min=1)
    mean = s / n
    return mean, total(((x - mean) ** 2 * mask).sum()) / n


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, reduce_sum=None) -> torch.Tensor:
    """x, mask (B, T) -> (x - mean) / sqrt(var + eps) over the valid tokens (of every rank, given
    reduce_sum), zero on padding."""
    mean, var = _masked_mean_var(x, mask, reduce_sum)
    return (x - mean) / (var + eps).sqrt() * mask


def reinforce_pp(
    rewards, mask, *, group_size, values=None, kl=None, kl_coef=0.0, gamma=1.0, lam=1.0, whiten=False, reduce_sum=None
):
    """REINFORCE++ (Hu 2025): each token's KL-shaped reward-to-go (GAE with no critic and lam = 1),
    whitened over every valid token of the batch, the global normalisation being its only baseline.
    Reads rewards, mask, kl, kl_coef, gamma, reduce_sum; always whitens; no critic, so returns None."""
    adv, _ = gae(token_rewards(rewards, mask, kl, kl_coef), torch.zeros_like(mask), mask, gamma, 1.0)
    return masked_whiten(adv, mask, reduce_sum=reduce_sum), None


def reinforce_pp_baseline(
    rewards, mask, *, group_size, values=None, kl=None, kl_coef=0.0, gamma=1.0, lam=1.0, whiten=False, reduce_sum=None
):
    """REINFORCE++-baseline (Hu 2025): REINFORCE++ on rewards less their group's mean, so a prompt's
    difficulty no longer shifts all its samples' advantages (GRPO's baseline without GRPO's std)."""
    centred = group_advantages(rewards, group_size, normalize_std=False)  # (B,)
    return reinforce_pp(
        centred, mask, group_size=group_size, kl=kl, kl_coef=kl_coef, gamma=gamma, reduce_sum=reduce_sum
    )


def gae_advantages(
    rewards, mask, *, group_size, values=None, kl=None, kl_coef=0.0, gamma=1.0, lam=1.0, whiten=False, reduce_sum=None
):
    """PPO with a learned critic, as InstructGPT trained it: ``gae`` over the KL-shaped ``token_rewards``
    and the critic's values (B, T). Whitening (optional) touches the advantages only: the returns, the
    critic's target, stay in reward units."""
    if values is None:
        raise ValueError("gae needs the critic's values (B, T)")
    adv, returns = gae(token_rewards(rewards, mask, kl, kl_coef), values, mask, gamma, lam)
    return (masked_whiten(adv, mask, reduce_sum=reduce_sum) if whiten else adv), returns


def _sequence_level(name: str, estimate):
    """A (rewards (B,), group_size) -> (B,) estimator under the uniform signature: the advantage copied onto
    each valid token. A reward-side KL would be silently dropped, so it raises instead."""

    def advantages(
        rewards,
        mask,
        *,
        group_size,
        values=None,
        kl=None,
        kl_coef=0.0,
        gamma=1.0,
        lam=1.0,
        whiten=False,
        reduce_sum=None,
    ):
        if kl_coef:
            raise ValueError(f"{name} is sequence-level: put its KL penalty in the loss, not the reward")
        return estimate(rewards, group_size)[:, None] * mask, None

    return advantages


ADVANTAGES = {
    "grpo": _sequence_level("grpo", partial(group_advantages, normalize_std=True)),
    "drgrpo": _sequence_level("drgrpo", partial(group_advantages, normalize_std=False)),
    "rloo": _sequence_level("rloo", leave_one_out_advantages),
    "reinforce_pp": reinforce_pp,
    "reinforce_pp_baseline": reinforce_pp_baseline,
    "gae": gae_advantages,
}
TOKEN_LEVEL_ADVANTAGES = frozenset({"reinforce_pp", "reinforce_pp_baseline", "gae"})  # take kl, gamma (lam) by token
ADVANTAGES_WITH_CRITIC = frozenset({"gae"})  # need values (B, T): the learner must train a critic


def distill_advantages(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
    reward_adv: torch.Tensor | None = None,
    reward_coef: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """On-policy distillation (Agarwal et al. 2024, GKD; Thinking Machines 2025): the student's log-probabilities
    of the tokens it sampled and the teacher's of the same tokens, mask (B, T) -> (advantages (B, T), reverse_kl
    (B, T)), both zero on padding, no gradient.

    reverse_kl = student - teacher, per token: the one-sample estimate of KL(student || teacher) at that position
    (k1; the sample being the student's own). advantages = -kl_coef * reverse_kl + reward_coef * reward_adv, a
    verifier's advantages (B,) or (B, T) (e.g. ``ADVANTAGES["grpo"]``'s). Each token is judged on its own, as in
    Thinking Machines' recipe: no reward-to-go (discount 0), no group or batch normalisation of the KL part."""
    reverse_kl = (student_logp - teacher_logp).detach() * mask  # (B, T)
    adv = -kl_coef * reverse_kl
    if reward_adv is not None and reward_coef:
        adv = adv + reward_coef * _per_token(reward_adv.detach()) * mask
    return adv * mask, reverse_kl


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


def token_logprobs_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
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

    logp, old_logp (B, T); advantages (B,) or (B, T) -> (loss (B, T), clipped (B, T) float 0/1).
    ratio is clipped to [1 - clip_low, 1 + clip_high]; clip_high > clip_low lets unlikely tokens with
    positive advantage grow faster (clip-higher), which keeps entropy from collapsing."""
    ratio = torch.exp(logp - old_logp)  # (B, T)
    adv = _per_token(advantages)  # (B, 1) or (B, T)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).float()


def ppo_loss(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float):
    """PPO's ``clipped_surrogate`` under the uniform policy-loss signature: (B, T) -> (loss, clipped) (B, T),
    zero on padding."""
    loss, clipped = clipped_surrogate(logp, old_logp, advantages, clip_low, clip_high)
    return loss * mask, clipped * mask


def gspo_loss(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float):
    """GSPO (Zheng et al. 2025) in its GSPO-token form: (B, T) -> (loss, clipped) (B, T), zero on padding.

    One importance ratio per sequence, s_i = exp(mean over its valid tokens of logp - old_logp), clipped
    at sequence level (the paper's clip_low / clip_high: 3e-4 / 4e-4, since s_i is a geometric mean):
    a token-level ratio's noise no longer decides which tokens train. Per token the ratio is
    sg(s_i) * exp(logp_t - sg(logp_t)): its value is s_i, its gradient s_i * dlogp_t, so aggregated
    with seq_mean_token_mean it is GSPO's gradient, with per-token advantages allowed."""
    log_s = ((logp - old_logp) * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,) log s_i
    log_ratio = log_s.detach()[:, None] + logp - logp.detach()  # (B, T): value log s_i
    return ppo_loss(log_ratio, torch.zeros_like(logp), advantages, mask, clip_low=clip_low, clip_high=clip_high)


def cispo_loss(logp, old_logp, advantages, mask, *, clip_low: float, clip_high: float):
    """CISPO (MiniMax 2025): -sg(clamp(ratio, 1 - clip_low, 1 + clip_high)) * A * logp per token: (B, T) ->
    (loss, clipped) (B, T), zero on padding; clipped marks tokens whose weight was clamped.

    PPO's clip zeroes a clipped token's gradient, and the rare tokens that open a line of reasoning are
    clipped first; clipping the stop-gradient importance weight instead bounds its variance while every
    token keeps its gradient. clip_low >= 1 leaves the weight unbounded below, as MiniMax-M1 ran it.
    The loss value is not PPO's (it scales with logp): compare gradients, not losses."""
    ratio = torch.exp(logp - old_logp).detach()  # (B, T)
    weight = ratio.clamp(1 - clip_low, 1 + clip_high)
    return -weight * _per_token(advantages) * logp * mask, (weight != ratio).float() * mask


POLICY_LOSSES = {"ppo": ppo_loss, "gspo": gspo_loss, "cispo": cispo_loss}


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss (the critic's; InstructGPT): (B, T) -> (per-token loss, clipped) (B, T),
    zero on padding. 0.5 max((v - R)^2, (old + clamp(v - old, -clip, clip) - R)^2): pessimistic, so the
    critic gains nothing from moving more than clip away from the values the advantages were computed
    with (a clipped token has no gradient). clip None: the plain 0.5 (v - R)^2."""
    unclipped = (values - returns) ** 2  # (B, T)
    if clip is None:
        return 0.5 * unclipped * mask, torch.zeros_like(mask)
    clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped) * mask, (clipped > unclipped).float() * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over valid tokens (B, T): 1 for a perfect critic, 0 for one no better than
    the mean return, negative for worse; nan when the returns do not vary."""
    _, var_r = _masked_mean_var(returns, mask)
    _, var_err = _masked_mean_var(returns - values, mask)
    return float(1 - var_err / var_r) if var_r > 0 else float("nan")


def truncated_is_weight(learner_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS, Yao et al. 2025) for a sampler whose probabilities drift from
    the learner's (vLLM's kernels, bf16): logp's (B, T) -> min(p_learner / p_sampler, cap) (B, T), no
    gradient. The cap bounds the variance a near-zero sampler probability would bring."""
    return torch.exp(learner_logp - sampler_logp).clamp(max=cap).detach()


LOSS_AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")  # masked_sum's modes
# Which aggregations each policy loss is sound under, for the config layer to check. GSPO's objective is a
# mean over sequences, and its per-token ratio only reproduces that gradient as a per-sequence token mean;
# the others weigh tokens by length. CISPO's paper uses token_mean; PPO works with all three.
POLICY_LOSS_AGGREGATIONS = {"ppo": LOSS_AGGREGATIONS, "gspo": ("seq_mean_token_mean",), "cispo": LOSS_AGGREGATIONS}


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


def dpo_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
    kind: str = "sigmoid",
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


def keep_top_k(rewards: torch.Tensor, eligible: torch.Tensor, *, k: int, threshold: float = 0.0) -> torch.Tensor:
    """Each prompt's ``k`` highest-reward eligible samples (all its eligible ones when fewer), a tie going to
    the earlier sample: (P, N), (P, N) -> keep (P, N). ``threshold`` is not used (one signature for all rules)."""
    masked = rewards.masked_fill(~eligible, float("-inf"))  # ineligible samples take no place in the ranking
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(rewards.shape[1]).expand_as(order))
    return eligible & (rank < k)


def keep_best(rewards: torch.Tensor, eligible: torch.Tensor, *, k: int = 1, threshold: float = 0.0) -> torch.Tensor:
    """Llama 2's rejection sampling: each prompt's one highest-reward eligible sample (the earlier on a tie)."""
    return keep_top_k(rewards, eligible, k=1)


def keep_above(rewards: torch.Tensor, eligible: torch.Tensor, *, k: int = 0, threshold: float) -> torch.Tensor:
    """Every eligible sample whose reward reaches ``threshold`` (expert iteration's filter): -> keep (P, N)."""
    return eligible & (rewards >= threshold)


KEEP_RULES = {"best": keep_best, "top_k": keep_top_k, "threshold": keep_above}
