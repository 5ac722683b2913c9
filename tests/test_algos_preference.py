"""Preference-stage math (DPO, IPO, Bradley-Terry, sequence log-probs) against values worked out by hand."""

import math

import torch
from conftest import assert_close_norm

from rlvr import algos

# Hand-computed (float64, rounded once to fp32) against a few fp32 operations on values of order 1: differences,
# a scale, a log-sigmoid or a square, each rounding by <= 1 eps of its operands; 8 eps covers them.
HAND = 8 * torch.finfo(torch.float32).eps


def test_dpo_sigmoid_hand_computed():
    # pair 1: chosen reward 0.5 - 0.1 = 0.4 (log-ratio), rejected -1.0 - (-0.2) = -0.8 -> margin 1.2
    #   beta 0.5: loss = -log sigmoid(0.6) = log(1 + e^-0.6) = 0.437488
    # pair 2: margin 0 -> loss log 2 = 0.693147
    loss, rc, rr = algos.dpo_loss(
        torch.tensor([0.5, -1.0]),
        torch.tensor([-1.0, -1.0]),
        torch.tensor([0.1, -1.0]),
        torch.tensor([-0.2, -1.0]),
        beta=0.5,
    )
    assert_close_norm(loss, [math.log(1 + math.exp(-0.6)), math.log(2)], HAND, "loss")
    assert_close_norm(rc, [0.2, 0.0], HAND, "chosen reward")  # beta * 0.4
    assert_close_norm(rr, [-0.4, 0.0], HAND, "rejected reward")  # beta * -0.8


def test_dpo_sigmoid_gradient_pushes_margin_up():
    # d/dc of -log sigmoid(beta (c - r)) = -beta (1 - sigmoid(beta m)); at m = 0: -beta / 2 = -0.05
    c = torch.tensor([0.0], requires_grad=True)
    loss, _, _ = algos.dpo_loss(c, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=0.1)
    loss.sum().backward()
    assert_close_norm(c.grad, [-0.05], HAND, "d loss / d chosen")


def test_ipo_hand_computed():
    # margin 1.2, beta 0.5: target 1 / (2 * 0.5) = 1 -> (1.2 - 1)^2 = 0.04; margin 0 -> 1
    loss, _, _ = algos.dpo_loss(
        torch.tensor([0.5, 0.0]),
        torch.tensor([-1.0, 0.0]),
        torch.tensor([0.1, 0.0]),
        torch.tensor([-0.2, 0.0]),
        beta=0.5,
        kind="ipo",
    )
    assert_close_norm(loss, [0.04, 1.0], HAND, "ipo loss")


def test_bradley_terry_hand_computed():
    # scores (2, 1): -log sigmoid(1) = log(1 + e^-1) = 0.313262; (0, 3): log(1 + e^3) = 3.048587
    loss = algos.bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 3.0]))
    assert_close_norm(loss, [math.log(1 + math.exp(-1)), math.log(1 + math.exp(3))], HAND, "bradley-terry loss")
    # only the difference matters: 102 - 101 is 1 exactly, so the loss is the same bit for bit
    assert torch.equal(algos.bradley_terry_loss(torch.tensor([102.0]), torch.tensor([101.0])), loss[:1])


def test_sequence_logprobs_sum_and_mean():
    logp = torch.tensor([[-1.0, -2.0, -4.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert_close_norm(algos.sequence_logprobs(logp, mask), [-7.0, -0.5], HAND, "sum")
    assert_close_norm(algos.sequence_logprobs(logp, mask, length_normalize=True), [-7 / 3, -0.5], HAND, "mean")


def test_preference_accuracy_ties_count_half():
    # wins, loss, tie, tie -> (1 + 0 + .5 + .5) / 4 = 0.5
    acc = algos.preference_accuracy(torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, 3.0]))
    assert acc.item() == 0.5
