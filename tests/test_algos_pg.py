"""The policy-gradient family (advantage estimators, policy losses, the critic's loss) against values worked
out by hand: the arithmetic is in the comments. Each also has a property test that a wrong sign or a dropped
mask breaks (a padded token changes nothing; at ratio 1 the gradient is -advantage)."""

import math
import threading

import pytest
import torch

from rlvr import algos

S = math.sqrt


# ---- advantage estimators -------------------------------------------------------------------------------------


def test_token_rewards_hand_computed():
    # the sequence reward lands on the last valid token; -0.1 * kl on every valid token; padding (kl 5) is dropped
    # row 0: [-0.02, +0.01, 1 - 0.03] ; row 1 (2 valid): [0, 2 - 0.05, 0] ; row 2 (no valid token): zeros
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [0, 0, 0]])
    kl = torch.tensor([[0.2, -0.1, 0.3], [0.0, 0.5, 5.0], [1.0, 1.0, 1.0]])
    r = algos.token_rewards(torch.tensor([1.0, 2.0, 3.0]), mask, kl, kl_coef=0.1)
    assert torch.allclose(r, torch.tensor([[-0.02, 0.01, 0.97], [0, 1.95, 0], [0, 0, 0]]), atol=1e-6)
    plain = algos.token_rewards(torch.tensor([1.0, 2.0, 3.0]), mask)
    assert plain.tolist() == [[0, 0, 1], [0, 2, 0], [0, 0, 0]]


def test_gae_three_token_episode_hand_computed():
    # gamma .9, lambda .8 -> gamma*lambda = .72. Row 0: r = (0, 0, 1), V = (.5, .6, .7), all valid:
    #   d2 = 1 + .9*0 - .7 = .3 ; d1 = 0 + .9*.7 - .6 = .03 ; d0 = 0 + .9*.6 - .5 = .04
    #   A2 = .3 ; A1 = .03 + .72*.3 = .246 ; A0 = .04 + .72*.246 = .21712 ; returns = A + V
    # Row 1: r = (0, 1, pad 5), V = (.5, .6, pad 9): the episode ends at token 1, so V beyond it is 0, not 9:
    #   d1 = 1 + 0 - .6 = .4 ; d0 = 0 + .9*.6 - .5 = .04 ; A1 = .4 ; A0 = .04 + .72*.4 = .328
    r = torch.tensor([[0.0, 0, 1], [0, 1, 5]])
    v = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    adv, ret = algos.gae(r, v, mask, gamma=0.9, lam=0.8)
    assert torch.allclose(adv, torch.tensor([[0.21712, 0.246, 0.3], [0.328, 0.4, 0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.71712, 0.846, 1.0], [0.828, 1.0, 0]]), atol=1e-6)
    assert not adv.requires_grad and not ret.requires_grad  # the critic's values are a baseline, not a path


def test_gae_estimator_with_kl_shaping_hand_computed():
    # rewards (1, 2), -0.1 * kl per token, gamma .9, lambda .8 (gamma*lambda .72)
    # row 0: r = (-.02, .01, .97), V = (.5, .6, .7): d2 = .97 - .7 = .27 ; d1 = .01 + .63 - .6 = .04 ;
    #   d0 = -.02 + .54 - .5 = .02 ; A2 = .27 ; A1 = .04 + .72*.27 = .2344 ; A0 = .02 + .72*.2344 = .188768
    # row 1 (token 2 padding, kl 5 and V 99 there): r = (0, 2), V = (1, 1.5): d1 = 2 - 1.5 = .5 ;
    #   d0 = .9*1.5 - 1 = .35 ; A1 = .5 ; A0 = .35 + .72*.5 = .71 ; returns = A + V = (1.71, 2)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    kl = torch.tensor([[0.2, -0.1, 0.3], [0, 0, 5.0]])
    v = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.5, 99.0]])
    adv, ret = algos.ADVANTAGES["gae"](
        torch.tensor([1.0, 2.0]), mask, group_size=2, values=v, kl=kl, kl_coef=0.1, gamma=0.9, lam=0.8
    )
    assert torch.allclose(adv, torch.tensor([[0.188768, 0.2344, 0.27], [0.71, 0.5, 0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.688768, 0.8344, 0.97], [1.71, 2.0, 0]]), atol=1e-6)
    with pytest.raises(ValueError, match="values"):
        algos.ADVANTAGES["gae"](torch.tensor([1.0, 2.0]), mask, group_size=2)


def test_gae_whitening_touches_the_advantages_not_the_critics_target():
    # same batch as above: whitened advantages have mean 0, variance 1 over the 5 valid tokens; returns unchanged
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    v = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.5, 99.0]])
    kw = dict(group_size=2, values=v, gamma=0.9, lam=0.8)
    raw, ret = algos.ADVANTAGES["gae"](torch.tensor([1.0, 2.0]), mask, **kw)
    white, ret_w = algos.ADVANTAGES["gae"](torch.tensor([1.0, 2.0]), mask, whiten=True, **kw)
    assert torch.equal(ret, ret_w) and torch.allclose(ret, (raw + v) * mask)
    assert white[mask > 0].mean().item() == pytest.approx(0, abs=1e-6)
    assert (white[mask > 0] ** 2).mean().item() == pytest.approx(1, abs=1e-5) and white[1, 2] == 0


def test_masked_whiten_hand_computed():
    # valid: 1, 2, 3, 4 -> mean 2.5, population variance (2.25 + .25 + .25 + 2.25) / 4 = 1.25; padding (100) ignored
    x, mask = torch.tensor([[1.0, 2, 3], [4, 100, 100]]), torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    expected = torch.tensor([[-1.5, -0.5, 0.5], [1.5, 0, 0]]) / S(1.25)
    assert torch.allclose(algos.masked_whiten(x, mask), expected, atol=1e-6)


def test_masked_whiten_over_two_ranks_equals_the_whole_batch():
    # two threads stand in for two ranks; reduce_sum is their all-reduce (the barrier keeps the calls in step)
    torch.manual_seed(0)
    x, mask = torch.randn(6, 5), (torch.rand(6, 5) > 0.3).float()
    whole = algos.masked_whiten(x, mask)
    barrier, slots, out = threading.Barrier(2, timeout=30), [None, None], [None, None]

    def run(rank):
        def all_reduce_sum(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()  # both have read before either writes the next call's slot
            return total

        out[rank] = algos.masked_whiten(x[rank::2], mask[rank::2], reduce_sum=all_reduce_sum)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.allclose(out[0], whole[0::2], atol=1e-6) and torch.allclose(out[1], whole[1::2], atol=1e-6)


def test_rloo_leave_one_out_hand_computed():
    # group 1: 4, 2, 1, 1 -> 4 - (2+1+1)/3 = 8/3 ; 2 - (4+1+1)/3 = 0 ; 1 - (4+2+1)/3 = -4/3 (twice)
    # group 2: 1, 1, 1, 5 -> 1 - (1+1+5)/3 = -4/3 (three times) ; 5 - (1+1+1)/3 = 4
    r = torch.tensor([4.0, 2, 1, 1, 1, 1, 1, 5])
    expected = torch.tensor([8 / 3, 0, -4 / 3, -4 / 3, -4 / 3, -4 / 3, -4 / 3, 4])
    assert torch.allclose(algos.leave_one_out_advantages(r, 4), expected, atol=1e-6)
    mask = torch.ones(8, 2)
    mask[1, 1] = 0
    adv, ret = algos.ADVANTAGES["rloo"](r, mask, group_size=4)
    assert torch.allclose(adv, expected[:, None] * mask, atol=1e-6) and adv[1, 1] == 0 and ret is None
    with pytest.raises(ValueError):
        algos.leave_one_out_advantages(r, 1)


def test_grpo_and_drgrpo_by_name_hand_computed():
    # groups (3, 1) and (0, .5). drgrpo: r - mean -> (1, -1), (-.25, .25).
    # grpo: / unbiased std: sqrt(2) and sqrt(2 * .25^2) = .353553 -> (.707107, -.707107), (-.707107, .707107)
    r, mask = torch.tensor([3.0, 1, 0, 0.5]), torch.tensor([[1.0, 1], [1, 0], [1, 1], [0, 0]])
    dr, _ = algos.ADVANTAGES["drgrpo"](r, mask, group_size=2)
    assert torch.allclose(dr, torch.tensor([[1.0, 1], [-1, 0], [-0.25, -0.25], [0, 0]]))
    gr, ret = algos.ADVANTAGES["grpo"](r, mask, group_size=2)
    h = 1 / S(2)
    assert torch.allclose(gr, torch.tensor([[h, h], [-h, 0], [-h, -h], [0, 0]]), atol=1e-5) and ret is None
    with pytest.raises(ValueError, match="loss"):  # GRPO's KL goes in the loss; a reward-side KL would be dropped
        algos.ADVANTAGES["grpo"](r, mask, group_size=2, kl=torch.ones(4, 2), kl_coef=0.1)


def test_reinforce_pp_hand_computed():
    # kl_coef .2. row 0 (R 1, kl .5, 0, 1): r = (-.1, 0, .8) -> reward-to-go (.7, .8, .8)
    # row 1 (R 0, kl 1, .5, pad 7): r = (-.2, -.1) -> (-.3, -.1)
    # over the 5 valid tokens: mean 1.9 / 5 = .38 ; deviations .32 .42 .42 -.68 -.48 ;
    # variance (.1024 + .1764 + .1764 + .4624 + .2304) / 5 = 1.148 / 5 = .2296
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    kl = torch.tensor([[0.5, 0.0, 1.0], [1.0, 0.5, 7.0]])
    adv, ret = algos.ADVANTAGES["reinforce_pp"](torch.tensor([1.0, 0.0]), mask, group_size=1, kl=kl, kl_coef=0.2)
    expected = torch.tensor([[0.32, 0.42, 0.42], [-0.68, -0.48, 0]]) / S(0.2296)
    assert torch.allclose(adv, expected, atol=1e-5) and ret is None


def test_reinforce_pp_baseline_subtracts_the_group_mean_hand_computed():
    # one token each, groups of 2: (1, 0) a hard prompt, (3, 3) an easy one.
    # baseline: (.5, -.5, 0, 0) -> mean 0, variance (.25 + .25) / 4 = .125 -> (.5, -.5, 0, 0) / sqrt(.125)
    # plain REINFORCE++: mean 1.75 -> (-.75, -1.75, 1.25, 1.25) / sqrt(6.75 / 4): the hard prompt's right
    # answer gets a negative advantage, which the group baseline fixes
    r, mask = torch.tensor([1.0, 0, 3, 3]), torch.ones(4, 1)
    base, _ = algos.ADVANTAGES["reinforce_pp_baseline"](r, mask, group_size=2)
    assert torch.allclose(base.squeeze(1), torch.tensor([0.5, -0.5, 0, 0]) / S(0.125), atol=1e-5)
    plain, _ = algos.ADVANTAGES["reinforce_pp"](r, mask, group_size=2)
    assert torch.allclose(plain.squeeze(1), torch.tensor([-0.75, -1.75, 1.25, 1.25]) / S(1.6875), atol=1e-5)


@pytest.mark.parametrize("name", sorted(algos.ADVANTAGES))
def test_every_estimator_ignores_padding_and_follows_the_reward(name):
    # What a dropped mask or a flipped sign breaks: junk in padded values and kl changes nothing, padding gets
    # no advantage, and within each group the better sample gets the positive advantage.
    torch.manual_seed(0)
    rewards = torch.tensor([1.0, -1, 0.5, -0.5])  # groups of 2
    mask = (torch.arange(4)[None, :] < torch.tensor([4, 2, 3, 1])[:, None]).float()
    token_level = name in algos.TOKEN_LEVEL_ADVANTAGES
    kl, values = 0.01 * torch.rand(4, 4), torch.zeros(4, 4)
    kw = dict(group_size=2, kl=kl, kl_coef=0.1 if token_level else 0.0, gamma=0.9, lam=0.8)
    adv, ret = algos.ADVANTAGES[name](rewards, mask, values=values, **kw)
    junk = torch.where(mask > 0, 0.0, 1e3)
    adv_j, ret_j = algos.ADVANTAGES[name](rewards, mask, values=values + junk, **{**kw, "kl": kl + junk})
    assert torch.equal(adv, adv_j) and (ret is None) == (ret_j is None) == (name not in algos.ADVANTAGES_WITH_CRITIC)
    assert ret is None or torch.equal(ret, ret_j)
    assert torch.all(adv[mask == 0] == 0)
    assert torch.sign(adv[:, 0]).tolist() == [1, -1, 1, -1]


# ---- policy losses --------------------------------------------------------------------------------------------


def test_clipped_surrogate_takes_token_level_advantages():
    # one sequence, ratios 1.5, .5, 1.1, per-token advantages +1, +1, -1, clip .2 / .28: the hand values of the
    # one-token-per-sequence test in test_algos.py, now along T: (-1.28, -.5, 1.1), first clipped
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    loss, clipped = algos.clipped_surrogate(logp, torch.zeros(1, 3), torch.tensor([[1.0, 1, -1]]), 0.2, 0.28)
    assert torch.allclose(loss, torch.tensor([[-1.28, -0.5, 1.1]]), atol=1e-6) and clipped.tolist() == [[1, 0, 0]]
    # (B,) advantages are per sequence even when B == T: sequence 1's A = 2 on both its tokens
    loss, _ = algos.clipped_surrogate(torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([1.0, 2.0]), 0.2, 0.2)
    assert loss.tolist() == [[-1, -1], [-2, -2]]


def _gspo_batch():
    # seq 0: 3 valid tokens, log-ratios .1, .3, .2 -> mean .2 -> s0 = e^.2 = 1.221403
    # seq 1: 1 valid token, log-ratio -.05, then padding with log-ratio 5 -> s1 = e^-.05 = .951229
    old = torch.tensor([[-1.0, -2.0, -1.5], [-0.5, -9.0, -9.0]])
    logp = old + torch.tensor([[0.1, 0.3, 0.2], [-0.05, 5.0, 5.0]])
    return logp, old, torch.tensor([[1.0, 1, 1], [1, 0, 0]])


def test_gspo_sequence_ratio_hand_computed_and_padding_does_not_change_it():
    logp, old, mask = _gspo_batch()
    adv = torch.tensor([[1.0, 1, 1], [-1, -1, -1]])
    loss, clipped = algos.gspo_loss(logp, old, adv, mask, clip_low=0.3, clip_high=0.3)
    s0, s1 = math.exp(0.2), math.exp(-0.05)  # 1.221403, .951229: inside [.7, 1.3], nothing clipped
    assert torch.allclose(loss, torch.tensor([[-s0, -s0, -s0], [s1, 0, 0]]), atol=1e-6)
    assert clipped.sum() == 0
    # seq 1 alone, without its padding, has the same loss
    alone, _ = algos.gspo_loss(logp[1:, :1], old[1:, :1], adv[1:, :1], mask[1:, :1], clip_low=0.3, clip_high=0.3)
    assert alone.item() == pytest.approx(s1, abs=1e-6)


def test_gspo_clips_the_whole_sequence_with_the_papers_epsilons():
    # clip_low 3e-4, clip_high 4e-4 -> [.9997, 1.0004].
    # seq 0: s 1.221403, A +1: min(1.2214, 1.0004) = 1.0004 -> loss -1.0004 on each token, clipped
    # seq 1: s .951229, A -1: min(-.9512, -.9997) = -.9997 -> loss .9997, clipped
    # seq 2 (= seq 1 with A +1): min(.9512, .9997) = .9512 -> loss -.951229, not clipped (pessimistic bound)
    logp, old, mask = _gspo_batch()
    logp, old, mask = torch.cat([logp, logp[1:]]), torch.cat([old, old[1:]]), torch.cat([mask, mask[1:]])
    logp.requires_grad_()
    adv = torch.tensor([[1.0] * 3, [-1.0] * 3, [1.0] * 3])
    loss, clipped = algos.gspo_loss(logp, old, adv, mask, clip_low=3e-4, clip_high=4e-4)
    expected = torch.tensor([[-1.0004] * 3, [0.9997, 0, 0], [-math.exp(-0.05), 0, 0]])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert clipped.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    loss.sum().backward()
    # clipped sequences get no gradient; the unclipped one gets -s * A = -.951229 on its valid token
    assert torch.allclose(logp.grad, torch.tensor([[0.0] * 3, [0.0] * 3, [-math.exp(-0.05), 0, 0]]), atol=1e-6)


def test_gspo_token_gradient_is_the_sequence_ratio_times_the_advantage():
    # GSPO-token: d loss_t / d logp_t = -s_i * A_i, the same for every token of a sequence although the tokens'
    # own ratios (e^.1, e^.3, e^.2) differ. seq 0: -1.221403 ; seq 1: +.951229 ; padding 0.
    logp, old, mask = _gspo_batch()
    logp.requires_grad_()
    adv = torch.tensor([[1.0, 1, 1], [-1, -1, -1]])
    loss, _ = algos.gspo_loss(logp, old, adv, mask, clip_low=0.3, clip_high=0.3)
    loss.sum().backward()
    s0, s1 = math.exp(0.2), math.exp(-0.05)
    assert torch.allclose(logp.grad, torch.tensor([[-s0, -s0, -s0], [s1, 0, 0]]), atol=1e-6)
    # aggregated by seq_mean_token_mean over B = 2 it is GSPO's sequence-level gradient, -(1/B) A_i s_i / |y_i|:
    # seq 0: -(1/2) * 1.221403 / 3 = -.203567 each ; seq 1: +(1/2) * .951229 = .475615
    logp.grad = None
    loss, _ = algos.gspo_loss(logp, old, adv, mask, clip_low=0.3, clip_high=0.3)
    mode = "seq_mean_token_mean"
    (algos.masked_sum(loss, mask, mode) / algos.loss_denominator(mask, mode)).backward()
    g0, g1 = -s0 / 6, s1 / 2
    assert torch.allclose(logp.grad, torch.tensor([[g0, g0, g0], [g1, 0, 0]]), atol=1e-6)


def _cispo_batch():
    # probabilities learner / sampler: .6/.4 = 1.5, .2/.4 = .5, .55/.5 = 1.1, then a padded token
    logp = torch.log(torch.tensor([[0.6, 0.2, 0.55, 0.3]])).requires_grad_()
    old = torch.log(torch.tensor([[0.4, 0.4, 0.5, 0.9]]))
    return logp, old, torch.tensor([[2.0, -1, 0.5, 3]]), torch.tensor([[1.0, 1, 1, 0]])


def test_cispo_gradient_is_the_clipped_weight_times_the_advantage():
    # clip .2 / .28: weights clamp(1.5, .8, 1.28) = 1.28, clamp(.5) = .8, 1.1 unclipped.
    # loss_t = -w A logp_t = -1.28*2*log .6, -.8*(-1)*log .2, -1.1*.5*log .55 ; d loss / d logp_t = -w A:
    # (-2.56, .8, -.55, padding 0). Both clipped tokens keep a gradient.
    logp, old, adv, mask = _cispo_batch()
    loss, clipped = algos.cispo_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    hand = [-2.56 * math.log(0.6), 0.8 * math.log(0.2), -0.55 * math.log(0.55), 0]
    assert torch.allclose(loss, torch.tensor([hand]), atol=1e-6) and clipped.tolist() == [[1, 1, 0, 0]]
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2.56, 0.8, -0.55, 0]]), atol=1e-6)
    # PPO drops both clipped tokens (ratio 1.5 with A > 0; ratio .5 with A < 0) and agrees on the unclipped one
    ppo_logp = logp.detach().requires_grad_()
    algos.ppo_loss(ppo_logp, old, adv, mask, clip_low=0.2, clip_high=0.28)[0].sum().backward()
    assert torch.allclose(ppo_logp.grad, torch.tensor([[0, 0, -0.55, 0]]), atol=1e-6)


def test_cispo_without_a_lower_bound():
    # clip_low 1: the weight .5 stays .5 (MiniMax-M1's setting) -> gradient +.5 on token 1, only token 0 clipped
    logp, old, adv, mask = _cispo_batch()
    loss, clipped = algos.cispo_loss(logp, old, adv, mask, clip_low=1.0, clip_high=0.28)
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2.56, 0.5, -0.55, 0]]), atol=1e-6)
    assert clipped.tolist() == [[1, 0, 0, 0]]


@pytest.mark.parametrize("name", sorted(algos.POLICY_LOSSES))
def test_every_policy_loss_ignores_padding_and_descends_along_the_advantage(name):
    # What a dropped mask or a flipped sign breaks: junk on padded tokens changes neither the loss nor the clip
    # flags and gets no gradient; at ratio 1 (logp = old) every loss's gradient is the policy gradient, -A_t.
    torch.manual_seed(0)
    mask = (torch.arange(5)[None, :] < torch.tensor([5, 3, 1])[:, None]).float()
    old, adv = -torch.rand(3, 5), torch.randn(3, 5)
    fn, clip = algos.POLICY_LOSSES[name], dict(clip_low=0.2, clip_high=0.28)
    logp = old.clone().requires_grad_()
    loss, clipped = fn(logp, old, adv, mask, **clip)
    loss.sum().backward()
    assert torch.allclose(logp.grad, -adv * mask, atol=1e-6) and clipped.sum() == 0
    junk = torch.where(mask > 0, 0.0, 3.0)
    logp_j = (old.detach() - 0.1 * mask + junk).requires_grad_()  # moved on valid tokens, junk on padding
    loss_j, clipped_j = fn(logp_j, old - junk, adv + junk, mask, **clip)
    loss_c, clipped_c = fn(old.detach() - 0.1 * mask, old, adv, mask, **clip)
    assert torch.allclose(loss_j, loss_c) and torch.equal(clipped_j, clipped_c)
    loss_j.sum().backward()
    assert torch.all(logp_j.grad[mask == 0] == 0) and torch.all(loss_j[mask == 0] == 0)


def test_registries_and_allowed_aggregations():
    assert set(algos.POLICY_LOSSES) == set(algos.POLICY_LOSS_AGGREGATIONS) == {"ppo", "gspo", "cispo"}
    assert all(set(v) <= set(algos.LOSS_AGGREGATIONS) for v in algos.POLICY_LOSS_AGGREGATIONS.values())
    assert algos.POLICY_LOSS_AGGREGATIONS["gspo"] == ("seq_mean_token_mean",)
    names = {"grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"}
    assert set(algos.ADVANTAGES) == names
    assert algos.ADVANTAGES_WITH_CRITIC <= algos.TOKEN_LEVEL_ADVANTAGES <= names


# ---- the critic -----------------------------------------------------------------------------------------------


def test_value_loss_clipping_hand_computed():
    # clip .2. tok 0: old 1, v 1.5, R 2: (1.5-2)^2 = .25 ; clipped v 1.2: (1.2-2)^2 = .64 -> .5 * .64 = .32, clipped
    # tok 1: old 1, v 1.5, R 1: .25 vs (1.2-1)^2 = .04 -> .5 * .25 = .125, not clipped
    # tok 2: old 0, v .1, R 1: inside the range, .81 both -> .405 ; tok 3: padding
    v = torch.tensor([[1.5, 1.5, 0.1, 5.0]], requires_grad=True)
    old, ret, mask = torch.tensor([[1.0, 1, 0, 0]]), torch.tensor([[2.0, 1, 1, -5]]), torch.tensor([[1.0, 1, 1, 0]])
    loss, clipped = algos.value_loss(v, old, ret, mask, clip=0.2)
    assert torch.allclose(loss, torch.tensor([[0.32, 0.125, 0.405, 0]]), atol=1e-6)
    assert clipped.tolist() == [[1, 0, 0, 0]]
    loss.sum().backward()  # d/dv .5 (v - R)^2 = v - R where unclipped: (0, .5, -.9, 0)
    assert torch.allclose(v.grad, torch.tensor([[0, 0.5, -0.9, 0]]), atol=1e-6)
    plain, none = algos.value_loss(v, old, ret, mask, clip=None)  # .5 (v - R)^2: .125, .125, .405
    assert torch.allclose(plain, torch.tensor([[0.125, 0.125, 0.405, 0]]), atol=1e-6) and none.sum() == 0


def test_explained_variance_hand_computed():
    # valid returns 1, 2, 3, 4: variance 1.25 ; R - V = 0, 0, 1, -1: variance .5 -> 1 - .5 / 1.25 = .6
    ret = torch.tensor([[1.0, 2, 99], [3, 4, -99]])
    mask = torch.tensor([[1.0, 1, 0], [1, 1, 0]])
    assert algos.explained_variance(torch.tensor([[1.0, 2, 7], [2, 5, 7]]), ret, mask) == pytest.approx(0.6)
    assert algos.explained_variance(ret, ret, mask) == pytest.approx(1.0)
    assert algos.explained_variance(torch.full((2, 3), 2.5), ret, mask) == pytest.approx(0.0)  # the mean
    assert math.isnan(algos.explained_variance(ret, torch.ones(2, 3), mask))
