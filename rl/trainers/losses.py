"""Stage-1 losses and the differentiable keep-mask relaxations; pure functions on tensors."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Relaxation = Literal["straight_through", "straight_through_bias", "gumbel", "sigmoid"]
HARD_DROP = -1.0e4  # additive key bias of a dropped token: exp(-1e4) == 0 in every float format we train in
MASK_FLOOR = 1.0e-6
"""`straight_through`: a dropped key's attention is scaled by this instead of 0 in the forward pass, so the attention
weight it would have had (times this) is known to the backward pass, which divides the factor out again."""


class _LogMask(torch.autograd.Function):
    """bias = log(max(m, floor)) with d bias / d m = 1 / max(m, floor).

    For a multiplicative key mask m in [0, 1], additive bias log m gives attention weights w_i proportional to
    m_i exp(s_i). At m_i = 0 the bias derivative of the loss is w_i * (...) = 0, but the derivative with respect to m_i
    (the effect of letting token i back in) is exp(s_i) / Z * (...), finite. Flooring m at `floor` keeps w_i tiny
    but non-zero in the forward pass, and dividing by the floor in the backward pass recovers that derivative.
    """

    @staticmethod
    def forward(ctx, mask: torch.Tensor, floor: float) -> torch.Tensor:
        clamped = mask.clamp(min=floor)
        ctx.save_for_backward(clamped)
        return clamped.log()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (clamped,) = ctx.saved_tensors
        return grad / clamped, None


def mask_fn(relaxation: Relaxation, temperature: float = 1.0, threshold: float = 0.5, generator=None):
    """The masked-mode key-bias function: VIP logits [batch, seq] -> log keep-probability [batch, seq].

    straight_through: the keep decision is sampled as at inference (a token is kept when logit + logistic noise passes
      the threshold) and applied hard in the forward pass; the backward pass takes the gradient of the soft
      Gumbel-sigmoid sample through the MULTIPLICATIVE mask (DynamicViT's estimator), so a dropped token learns
      whether letting it back in would lower the loss (see docs/method.md section 2.1);
    straight_through_bias: the same forward, but the gradient taken through the additive bias: a dropped key has
      attention weight exactly 0, so the loss gives it no gradient at all (kept to show that difference);
    gumbel: the soft Gumbel-sigmoid (binary concrete) log-probability, forward and backward;
    sigmoid: log sigmoid(logit / temperature), no noise.
    """
    cut = math.log(threshold / (1.0 - threshold)) if threshold > 0 else -math.inf  # 0.0: every token is kept

    def fn(logits: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        if relaxation == "sigmoid":
            return F.logsigmoid((logits - cut) / temperature)
        u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-6, 1 - 1e-6)
        noisy = logits - cut + torch.log(u) - torch.log1p(-u)
        if relaxation == "straight_through":
            soft = torch.sigmoid(noisy / temperature)
            hard = (noisy > 0).to(soft.dtype)
            return _LogMask.apply(hard + soft - soft.detach(), MASK_FLOOR)
        soft = F.logsigmoid(noisy / temperature)
        if relaxation == "gumbel":
            return soft
        hard = torch.where(noisy > 0, torch.zeros_like(soft), torch.full_like(soft, HARD_DROP))
        return hard + soft - soft.detach()

    if relaxation not in ("straight_through", "straight_through_bias", "gumbel", "sigmoid"):
        raise ValueError(
            f"relaxation must be straight_through, straight_through_bias, gumbel or sigmoid, got {relaxation!r}."
        )
    return fn


def answer_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens of KL(teacher || student) of the next-token distributions.

    logits: [batch, seq, vocab] aligned on the same columns; labels: [batch, seq], -100 outside the answer.
    The distribution at column t predicts label t+1.
    """
    target = labels[:, 1:] != -100
    t = F.log_softmax(teacher_logits[:, :-1][target].float(), dim=-1)
    s = F.log_softmax(student_logits[:, :-1][target].float(), dim=-1)
    if t.shape[0] == 0:
        return student_logits.sum() * 0.0
    return (t.exp() * (t - s)).sum(-1).mean()


def answer_nll(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (the optional LM loss of the pruned student)."""
    return F.cross_entropy(
        student_logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100, reduction="mean"
    )


def sparsity_loss(
    keep_prob: torch.Tensor, visual: torch.Tensor, mode: Literal["target", "batch_target", "penalty"], target: float
) -> torch.Tensor:
    """Pressure on the mean keep probability of each sample's visual tokens, averaged over the batch.

    target: (mean - target)^2 per sample pulls every sample's keep ratio to `target` from either side;
    batch_target: (batch mean - target)^2 pulls only the batch's average there (samples may differ);
    penalty: the mean itself (scaled by its weight outside), pushing towards dropping.
    keep_prob, visual: [batch, seq].
    """
    per_sample = (keep_prob * visual).sum(1) / visual.sum(1).clamp(min=1)
    if mode == "target":
        return ((per_sample - target) ** 2).mean()
    if mode == "batch_target":
        return (per_sample.mean() - target) ** 2
    if mode == "penalty":
        return per_sample.mean()
    raise ValueError(f"sparsity mode must be 'target', 'batch_target' or 'penalty', got {mode!r}.")


def box_targets(boxes: list[list[float]], image_size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """[rows, cols] float: 1 for token cells whose centre lies inside any box (pixels of the original image).

    A box smaller than a cell still marks the cell holding its centre, so no box is ever invisible.
    """
    width, height = image_size
    rows, cols = grid
    cy = (torch.arange(rows, dtype=torch.float32) + 0.5) * height / rows
    cx = (torch.arange(cols, dtype=torch.float32) + 0.5) * width / cols
    target = torch.zeros(rows, cols)
    for x0, y0, x1, y1 in boxes:
        inside = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
        target = torch.maximum(target, inside.float())
        r = min(int((y0 + y1) / 2 * rows / height), rows - 1)
        c = min(int((x0 + x1) / 2 * cols / width), cols - 1)
        target[r, c] = 1.0
    return target


def dice_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float,
    bce_weight: float,
    pos_weight: float = 1.0,
    focal_gamma: float = 0.0,
) -> torch.Tensor:
    """Dice loss on sigmoid(logits) plus weighted binary cross-entropy, over one image's tokens (flat tensors).

    pos_weight > 1 weighs missed box cells more than extra kept ones (box cells are a small minority). focal_gamma > 0
    scales each cell's cross-entropy by (1 - p_t)^gamma, p_t the probability given to its true label (a focal loss):
    cells already scored right add almost nothing, so the term follows the cells still scored wrong.
    """
    prob = torch.sigmoid(logits.float())
    dice = 1.0 - (2.0 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    weight = torch.tensor(pos_weight, device=logits.device)
    # At gamma 0, torch's own mean reduction: its gradient differs from that of an elementwise loss's mean in the last
    # bits, and the recipes of record trained on it (one-thread training reruns bit for bit).
    reduction = "mean" if focal_gamma == 0 else "none"
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=weight, reduction=reduction)
    if focal_gamma != 0:
        p_true = torch.where(target > 0.5, prob, 1.0 - prob)
        bce = ((1.0 - p_true) ** focal_gamma * bce).mean()
    return dice_weight * dice + bce_weight * bce


def recall_precision(keep: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Box recall (target cells kept / target cells) and precision (kept cells on target / kept cells)."""
    keep, target = keep.bool().flatten(), target.bool().flatten()
    hit = (keep & target).sum().item()
    return hit / max(target.sum().item(), 1), hit / max(keep.sum().item(), 1)


def kept_box_scores(result, keep: torch.Tensor, sample: int, boxes, image_sizes) -> tuple[float, float] | None:
    """(recall, precision) of one sample's kept tokens (keep [batch, seq]) against its boxes.

    result: the GlimpseResult that laid out the tokens; boxes: pixel boxes of the sample's single image;
    image_sizes: the sample's image sizes. None when the sample has no boxes or several images.
    """
    if not boxes or len(image_sizes) != 1:
        return None
    grid = result.image_values(keep, sample)[0]
    return recall_precision(grid, box_targets(boxes, image_sizes[0], tuple(grid.shape)))
