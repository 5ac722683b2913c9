"""Preference-stage math (DPO, IPO, Bradley-Terry, sequence log-probs) against values worked out by hand."""

import math

import torch

from rlvr import algos


def test_dpo_sigmoid_hand_computed():
    # pair 1: chosen reward 0.5 - 0.1 = 0.4 (log-ratio), rejected -1.0 - (-0.2) = -0.8 -> margin 1.2
    #   beta 0.5: loss = -log sigmoid(0.6) = log(1 + e^-0.6) = 0.437488
    # pair 2: margin 0 -> loss log 2 = 0.693147
    loss, rc, rr = algos.dpo_loss(torch.tensor([0.5, -1.0]), torch.tensor([-1.0, -1.0]),
                                  torch.tensor([0.1, -1.0]), torch.tensor([-0.2, -1.0]), beta=0.5)
    assert torch.allclose(loss, torch.tensor([math.log(1 + math.exp(-0.6)), math.log(2)]), atol=1e-6)
    assert torch.allclose(rc, torch.tensor([0.2, 0.0]), atol=1e-6)  # beta * 0.4
    assert torch.allclose(rr, torch.tensor([-0.4, 0.0]), atol=1e-6)  # beta * -0.8


def test_dpo_sigmoid_gradient_pushes_margin_up():
    # d/dc of -log sigmoid(beta (c - r)) = -beta (1 - sigmoid(beta m)); at m = 0: -beta / 2 = -0.05
    c = torch.tensor([0.0], requires_grad=True)
    loss, _, _ = algos.dpo_loss(c, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=0.1)
    loss.sum().backward()
    assert torch.allclose(c.grad, torch.tensor([-0.05]))


def test_ipo_hand_computed():
    # margin 1.2, beta 0.5: target 1 / (2 * 0.5) = 1 -> (1.2 - 1)^2 = 0.04; margin 0 -> 1
    loss, _, _ = algos.dpo_loss(torch.tensor([0.5, 0.0]), torch.tensor([-1.0, 0.0]),
                                torch.tensor([0.1, 0.0]), torch.tensor([-0.2, 0.0]), beta=0.5, kind="ipo")
    assert torch.allclose(loss, torch.tensor([0.04, 1.0]), atol=1e-6)


def test_bradley_terry_hand_computed():
    # scores (2, 1): -log sigmoid(1) = log(1 + e^-1) = 0.313262; (0, 3): log(1 + e^3) = 3.048587
    loss = algos.bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0]))
    assert torch.allclose(loss, torch.tensor([0.313262, 3.048587]), atol=1e-5)
    # only the difference matters
    assert torch.allclose(algos.bradley_terry_loss(torch.tensor([102.0]), torch.tensor([101.0])), loss[:1])


def test_sequence_logprobs_sum_and_mean():
    logp = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(algos.sequence_logprobs(logp, mask), torch.tensor([-7.0, -0.5]))
    assert torch.allclose(algos.sequence_logprobs(logp, mask, length_normalize=True), torch.tensor([-7 / 3, -0.5]))


def test_preference_accuracy_ties_count_half():
    # wins, loss, tie, tie -> (1 + 0 + .5 + .5) / 4 = 0.5
    acc = algos.preference_accuracy(torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, 3.0]))
    assert acc.item() == 0.5
