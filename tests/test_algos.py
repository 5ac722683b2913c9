"""The GRPO math against values worked out by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from rlvr import algos


def test_group_advantages_grpo_hand_computed():
    # group 1: rewards 1,0,0,1 -> mean .5, unbiased std sqrt(1/3)=.57735 -> +-.866025
    # group 2: 2,2,2,2 -> all zero (std 0, numerator 0)
    r = torch.tensor([1.0, 0, 0, 1, 2, 2, 2, 2])
    adv = algos.group_advantages(r, 4, normalize_std=True, eps=0.0 + 1e-12)
    s = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(adv, torch.tensor([s, -s, -s, s, 0, 0, 0, 0]), atol=1e-5)


def test_group_advantages_drgrpo_no_std():
    # Dr. GRPO: r - mean only. group (3, 1) -> (+1, -1); group (0, 0.5) -> (-.25, +.25)
    adv = algos.group_advantages(torch.tensor([3.0, 1, 0, 0.5]), 2, normalize_std=False)
    assert torch.allclose(adv, torch.tensor([1.0, -1, -0.25, 0.25]))


def test_informative_groups():
    r = torch.tensor([1.0, 0, 1, 0, 0, 0, 0.5, 0.5, 0.5])
    assert algos.informative_groups(r, 3).tolist() == [True, False, False]


def test_clipped_surrogate_hand_computed():
    # three one-token sequences: ratios 1.5, 0.5, 1.1 ; advantages +1, +1, -1 ; clip_low .2, clip_high .28
    # seq 0, A=+1: min(1.5, clamp->1.28) = 1.28 -> loss -1.28, clipped
    # seq 1, A=+1: min(0.5, clamp->0.8) = 0.5 -> loss -0.5, not clipped (the pessimistic bound is unclipped)
    # seq 2, A=-1: min(-1.1, -1.1) = -1.1 -> loss 1.1, not clipped
    logp = torch.log(torch.tensor([[1.5], [0.5], [1.1]]))
    loss, clipped = algos.clipped_surrogate(logp, torch.zeros(3, 1), torch.tensor([1.0, 1.0, -1.0]), 0.2, 0.28)
    assert torch.allclose(loss, torch.tensor([[-1.28], [-0.5], [1.1]]), atol=1e-6)
    assert clipped.squeeze(-1).tolist() == [1.0, 0.0, 0.0]


def test_clip_higher_is_asymmetric():
    # ratio 0.7 with A=-1: clamp to 0.8 -> min(-0.7, -0.8) = -0.8 -> loss 0.8 (clipped from below at 1-0.2)
    logp = torch.log(torch.tensor([[0.7]]))
    loss, clipped = algos.clipped_surrogate(logp, torch.zeros(1, 1), torch.tensor([-1.0]), 0.2, 0.28)
    assert loss.item() == pytest.approx(0.8) and clipped.item() == 1.0


def test_clipped_surrogate_gradient_is_policy_gradient_at_ratio_one():
    # At ratio 1 the gradient of -ratio*A wrt logp is -A.
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = algos.clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([2.0]), 0.2, 0.2)
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2.0, -2.0]]))


def test_truncated_is_weight_hand_computed():
    # learner / sampler probabilities: 0.5/0.25 = 2 -> capped at 1.5; 0.2/0.4 = 0.5; equal -> 1
    learner = torch.log(torch.tensor([[0.5, 0.2, 0.3]], requires_grad=True))
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.3]]))
    w = algos.truncated_is_weight(learner, sampler, 1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 0.5, 1.0]]), atol=1e-6) and not w.requires_grad


def test_kl_estimators_hand_computed():
    # log(pi/ref) = 0.5 -> k1 = .5 ; k2 = .125 ; k3 = e^-.5 - 1 + .5 = .1065307
    logp, ref = torch.tensor([[0.0]]), torch.tensor([[-0.5]])
    assert algos.kl_estimate(logp, ref, "k1").item() == pytest.approx(0.5)
    assert algos.kl_estimate(logp, ref, "k2").item() == pytest.approx(0.125)
    assert algos.kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(-0.5) - 0.5, abs=1e-6)
    assert algos.kl_estimate(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError):
        algos.kl_estimate(logp, ref, "k9")


def test_loss_aggregation_modes_hand_computed():
    # seq 1: tokens 1, 2, 3 (3 valid) ; seq 2: token 4 then padding
    per_tok = torch.tensor([[1.0, 2, 3], [4, 100, 100]])
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])

    def loss(mode):
        return (algos.masked_sum(per_tok, mask, mode, max_len=5) / algos.loss_denominator(mask, mode)).item()

    # token_mean: (1+2+3+4)/4 = 2.5
    assert loss("token_mean") == pytest.approx(2.5)
    # seq_mean_token_mean: (6/3 + 4/1) / 2 = 3
    assert loss("seq_mean_token_mean") == pytest.approx(3.0)
    # Dr. GRPO: (6 + 4) / max_len 5 / 2 seqs = 1
    assert loss("seq_mean_token_sum_norm") == pytest.approx(1.0)
    assert set(algos.LOSS_AGGREGATIONS) == {"token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"}


def test_micro_batches_add_up_to_the_full_batch_loss():
    torch.manual_seed(0)
    per_tok, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        denom = algos.loss_denominator(mask, mode)
        whole = algos.masked_sum(per_tok, mask, mode, 5) / denom
        parts = sum(algos.masked_sum(per_tok[i : i + 2], mask[i : i + 2], mode, 5) / denom for i in range(0, 6, 2))
        assert torch.allclose(whole, parts)


def test_overlong_penalty_hand_computed():
    # max 100, buffer 20: no penalty up to 80; 90 -> -0.5 * penalty; 100 -> -penalty
    pen = algos.overlong_penalty(torch.tensor([50, 80, 90, 100]), 100, 20, 2.0)
    assert pen.tolist() == [0.0, 0.0, -1.0, -2.0]


def test_token_logprobs_and_entropy():
    # uniform over 4 tokens: logp = -log 4, entropy = log 4; temperature does not change a uniform
    logits = torch.zeros(1, 2, 4)
    lp = algos.token_logprobs(logits, torch.tensor([[0, 3]]), temperature=0.7)
    assert torch.allclose(lp, torch.full((1, 2), -math.log(4)))
    assert torch.allclose(algos.entropy(logits), torch.full((1, 2), math.log(4)))
    # logits (0, log 3) at T=1 -> p = (.25, .75)
    two = torch.tensor([[0.0, math.log(3)]])
    assert algos.token_logprobs(two, torch.tensor([1])).item() == pytest.approx(math.log(0.75))
    # at T=0.5 the logits double: (0, 2 log 3) -> p = (1/10, 9/10)
    assert algos.token_logprobs(two, torch.tensor([1]), 0.5).item() == pytest.approx(math.log(0.9))


def test_token_logprobs_entropy_matches_the_two_and_its_backward_is_exact():
    # p = (.25, .75) at T=1: logp of token 1 = log .75, entropy = -(.25 log .25 + .75 log .75)
    two = torch.tensor([[0.0, math.log(3)]])
    lp, ent = algos.token_logprobs_entropy(two, torch.tensor([1]))
    assert lp.item() == pytest.approx(math.log(0.75))
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    torch.manual_seed(0)
    logits, tokens = torch.randn(6, 11, dtype=torch.float64, requires_grad=True), torch.randint(0, 11, (6,))
    for T in (1.0, 0.7):
        lp, ent = algos.token_logprobs_entropy(logits, tokens, T)
        assert torch.allclose(lp, algos.token_logprobs(logits, tokens, T).double(), atol=1e-6)
        assert torch.allclose(ent, algos.entropy(logits, T).double(), atol=1e-6)
        assert algos.token_logprobs_entropy(logits, tokens, T, with_entropy=False)[1] is None
        # the hand-written backward against finite differences: logp, entropy, and both together
        for pick in (lambda o: o[0], lambda o: o[1], lambda o: o[0] + 2 * o[1]):
            assert torch.autograd.gradcheck(
                lambda x, pick=pick, T=T: pick(algos.token_logprobs_entropy(x, tokens, T)), (logits,)
            )
    bf16 = logits.detach().bfloat16().requires_grad_()
    lp, ent = algos.token_logprobs_entropy(bf16, tokens)
    (lp.sum() + ent.sum()).backward()
    assert lp.dtype == ent.dtype == torch.float32 and bf16.grad.dtype == torch.bfloat16


def test_dpo_and_bradley_terry_hand_computed():
    # margin = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2 ; beta .5 -> -log sigmoid(1) = .3132617
    loss, cr, rr = algos.dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5
    )
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert cr.item() == pytest.approx(0.5) and rr.item() == pytest.approx(-0.5)
    # ipo: (2 - 1/(2*.5))^2 = 1
    loss, _, _ = algos.dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5, kind="ipo"
    )
    assert loss.item() == pytest.approx(1.0)
    assert algos.bradley_terry_loss(torch.tensor([2.0]), torch.tensor([2.0])).item() == pytest.approx(math.log(2))
