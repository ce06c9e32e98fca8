"""Stage-1 losses on hand-computed tensors."""

import math

import pytest
import torch

from glimpserl.rl.trainers import losses


def test_answer_kl_by_hand():
    # One answer token (label at column 2 is predicted by column 1). Teacher p = (0.5, 0.5), student q = (0.8, 0.2).
    labels = torch.tensor([[-100, -100, 7]])
    teacher = torch.zeros(1, 3, 2)
    student = torch.zeros(1, 3, 2)
    student[0, 1] = torch.tensor([math.log(0.8), math.log(0.2)])
    expected = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert losses.answer_kl(teacher, student, labels).item() == pytest.approx(expected, abs=1e-6)
    assert losses.answer_kl(teacher, teacher, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_sparsity_target_and_penalty():
    keep = torch.tensor([[0.0, 1.0, 0.5, 9.0], [0.2, 0.2, 0.2, 9.0]])
    visual = torch.tensor([[True, True, True, False], [True, True, True, False]])
    # Per-sample means over visual tokens: 0.5 and 0.2.
    assert losses.sparsity_loss(keep, visual, "penalty", 0.0).item() == pytest.approx(0.35)
    assert losses.sparsity_loss(keep, visual, "target", 0.3).item() == pytest.approx((0.2**2 + 0.1**2) / 2)
    # The batch's mean (0.35) alone is pulled to the target: samples may keep different shares.
    assert losses.sparsity_loss(keep, visual, "batch_target", 0.3).item() == pytest.approx(0.05**2)
    assert losses.sparsity_loss(keep, visual, "batch_target", 0.35).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="sparsity mode"):
        losses.sparsity_loss(keep, visual, "l1", 0.3)


def test_box_targets_centre_rule_and_tiny_box():
    # 4x4 grid over a 40x40 image: cells are 10 px; centres at 5, 15, 25, 35.
    target = losses.box_targets([[0, 0, 20, 20]], (40, 40), (4, 4))
    assert target.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    tiny = losses.box_targets([[31, 21, 33, 23]], (40, 40), (4, 4))  # no centre inside: the centre cell is marked
    assert tiny.sum() == 1 and tiny[2, 3] == 1


def test_dice_bce_by_hand():
    logits = torch.tensor([0.0, 0.0])  # p = 0.5, 0.5
    target = torch.tensor([1.0, 0.0])
    dice = 1 - (2 * 0.5 + 1) / (1.0 + 1.0 + 1)
    bce = math.log(2)
    assert losses.dice_bce(logits, target, 1.0, 0.1).item() == pytest.approx(dice + 0.1 * bce, abs=1e-6)
    # pos_weight 3 triples the positive cell's BCE term: (3 * log 2 + log 2) / 2.
    weighted = losses.dice_bce(logits, target, 0.0, 1.0, pos_weight=3.0).item()
    assert weighted == pytest.approx(2 * math.log(2), abs=1e-6)


def test_dice_bce_focal_by_hand():
    # Box cell at p = sigmoid(2) (nearly right), background cell at p = sigmoid(1) (wrong): gamma 2 weighs each cell's
    # BCE by (1 - p_true)^2, so the wrong cell dominates; pos_weight still multiplies the box cell.
    logits = torch.tensor([2.0, 1.0])
    target = torch.tensor([1.0, 0.0])
    p_box, p_bg = torch.sigmoid(logits).tolist()
    box_term = 3.0 * (1 - p_box) ** 2 * -math.log(p_box)
    bg_term = p_bg**2 * -math.log(1 - p_bg)
    focal = losses.dice_bce(logits, target, 0.0, 1.0, pos_weight=3.0, focal_gamma=2.0).item()
    assert focal == pytest.approx((box_term + bg_term) / 2, abs=1e-6)
    assert bg_term > 10 * box_term
    assert losses.dice_bce(logits, target, 1.0, 0.1, 3.0, focal_gamma=0.0).item() == pytest.approx(
        losses.dice_bce(logits, target, 1.0, 0.1, 3.0).item()
    )


def test_straight_through_is_hard_in_value_and_soft_in_gradient():
    logits = torch.tensor([[4.0, -4.0, 0.3]], requires_grad=True)
    for relaxation, dropped in (("straight_through", math.log(losses.MASK_FLOOR)), ("straight_through_bias", -1e4)):
        g = torch.Generator().manual_seed(0)
        bias = losses.mask_fn(relaxation, 1.0, 0.5, generator=g)(logits, torch.ones_like(logits).bool())
        values = bias.detach()[0].tolist()
        assert all(v == 0.0 or v == pytest.approx(dropped) for v in values) and min(values) < -1, relaxation
        logits.grad = None
        bias.sum().backward()
        assert (logits.grad != 0).all()


def _one_token_answer(relaxation: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A toy attention read-out whose answer lives in token 0 alone: its value is the only one pointing along the
    first axis. The VIP logits drop token 0 (in this sample) and keep the rest. Returns (d loss / d logits, keep)."""
    n = 6
    values = torch.zeros(n, 2)
    values[0, 0] = 1.0
    values[1:, 1] = 1.0
    scores = torch.zeros(n)  # the query attends to every key alike
    teacher = torch.softmax(scores, 0) @ values
    logits = torch.tensor([-1.0, 3.0, 3.0, 3.0, 3.0, 3.0], requires_grad=True)
    bias = losses.mask_fn(relaxation, 1.0, 0.5, generator=torch.Generator().manual_seed(seed))(logits, None)
    student = torch.softmax(scores + bias, 0) @ values
    ((student - teacher) ** 2).sum().backward()
    return logits.grad, bias.detach() > -math.log(2)


@pytest.mark.parametrize("seed", range(4))
def test_a_dropped_token_that_holds_the_answer_is_pulled_back_in(seed):
    """The defect behind a KL-only VIP that learns the budget but not the place: through the additive bias a
    dropped key has attention weight exactly 0, so d loss / d logit is exactly 0 for it and the loss can never pull
    it back. Through the multiplicative mask the same sample gives it a negative gradient (raise its logit)."""
    for attempt in range(seed * 50, seed * 50 + 50):  # find a sample in which token 0 is dropped, the rest kept
        grad, keep = _one_token_answer("straight_through", attempt)
        if not keep[0] and keep[1:].all():
            break
    else:
        pytest.fail("no sample dropped token 0 alone")
    assert grad[0] < 0
    old_grad, old_keep = _one_token_answer("straight_through_bias", attempt)
    assert torch.equal(old_keep, keep) and old_grad[0] == 0


def test_sigmoid_relaxation_and_threshold():
    logits = torch.tensor([[0.0, math.log(3.0)]])
    bias = losses.mask_fn("sigmoid", 1.0, 0.5)(logits, None)
    assert torch.allclose(bias.exp(), torch.tensor([[0.5, 0.75]]))
    # A 0.75 threshold moves the cut: logit log(3) sits exactly on it.
    shifted = losses.mask_fn("sigmoid", 1.0, 0.75)(logits, None)
    assert shifted.exp()[0, 1].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="relaxation must be straight_through, straight_through_bias"):
        losses.mask_fn("hard")


def test_recall_precision():
    keep = torch.tensor([[1, 1], [0, 0]])
    target = torch.tensor([[1, 0], [1, 0]])
    assert losses.recall_precision(keep, target) == (0.5, 0.5)
