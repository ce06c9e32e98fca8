"""VisionZip-style selection: dominant tokens by vision-encoder attention, plus spread-out contextual tokens.

What VisionZip (arXiv 2412.04467) does, inside the vision encoder: keep the "dominant" tokens that
receive the most attention (from CLS, or on average when there is no CLS); among the rest, take
uniformly spaced "target" tokens and merge every other remaining token into its most similar target
(similarity of attention keys), averaging them into "contextual" tokens.

What this module does, and the simplifications:
- `VisionZipSelector` only SELECTS positions: `dominant = floor(keep * dominant_fraction + 0.5)`
  tokens with the largest `vision_attn` (ties to the lower index), then `keep - dominant` contextual
  tokens evenly spaced (centred) over the remaining tokens in their original (raster) order. Without
  merging, the contextual tokens are plain kept tokens; kept tokens keep their original positions.
- `merge_into_kept` is the optional merge step, applied by the caller to the features it will feed
  on. It uses cosine similarity of the projector outputs (VisionZip uses the encoder's keys) and
  averages each receiver with all the tokens assigned to it with equal weights.
- `vision_attn` comes from the model family (a family lists "vision_attn" among its pruner signals):
  aligned with the post-projector tokens, e.g. LLaVA's CLS attention at the projector's feature layer.
  A family without one (Qwen2-VL's encoder has no CLS and windowed blocks) cannot run this selector.
- The default `dominant_fraction` is VisionZip's 54 dominant + 10 contextual of 64 tokens.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .registry import (
    SelectorInputs,
    TokenSelector,
    cosine_similarity_matrix,
    index_mask,
    register_selector,
    top_k_mask,
)


def visionzip_split(
    features: Tensor, keep: int, vision_attn: Tensor, dominant_fraction: float
) -> tuple[Tensor, Tensor]:
    """Disjoint bool masks `[n]` (dominant, contextual) whose union holds exactly `keep` tokens."""
    n = features.shape[0]
    n_dominant = min(keep, int(keep * dominant_fraction + 0.5))
    dominant = top_k_mask(vision_attn.float().to(features.device), n_dominant)
    rest = torch.nonzero(~dominant).squeeze(1)
    n_context = keep - n_dominant
    # Centred even spacing: the j-th pick is at (j + 1/2) * len(rest) / n_context, never repeating.
    slots = torch.div(
        (2 * torch.arange(n_context, device=rest.device) + 1) * rest.numel(), 2 * n_context, rounding_mode="floor"
    )
    return dominant, index_mask(rest[slots], n, features.device)


@register_selector("visionzip")
@dataclasses.dataclass(frozen=True)
class VisionZipSelector(TokenSelector):
    """Dominant tokens by `vision_attn` plus evenly spaced contextual tokens; see the module docstring."""

    dominant_fraction: float = 54 / 64

    needs = frozenset({"vision_attn"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.dominant_fraction <= 1.0:
            raise ValueError(f"dominant_fraction must be in [0, 1], got {self.dominant_fraction}")

    def choose(self, x: SelectorInputs) -> Tensor:
        dominant, contextual = visionzip_split(x.features, x.keep, x.vision_attn, self.dominant_fraction)
        return dominant | contextual


def merge_into_kept(features: Tensor, keep_mask: Tensor, receivers: Tensor | None = None) -> Tensor:
    """Fold every dropped token into its most similar receiver: `[n, d]`, `[n]` bool -> `[keep, d]`.

    Rows follow the kept tokens in index order. A receiver's row becomes the plain mean of itself and
    the dropped tokens assigned to it (cosine similarity, ties to the lower index); other kept rows are
    unchanged. `receivers [n]` bool (a subset of `keep_mask`) restricts which kept tokens absorb, e.g.
    VisionZip's contextual tokens; default: all kept tokens.
    """
    if keep_mask.dtype != torch.bool or keep_mask.shape != features.shape[:1] or not keep_mask.any():
        raise ValueError("keep_mask must be a bool [n] tensor matching features [n, d] with at least one True")
    receivers = keep_mask if receivers is None else receivers
    if receivers.shape != keep_mask.shape or bool((receivers & ~keep_mask).any()) or not receivers.any():
        raise ValueError("receivers must be a non-empty bool [n] subset of keep_mask")
    kept_idx = torch.nonzero(keep_mask).squeeze(1)
    dropped_idx = torch.nonzero(~keep_mask).squeeze(1)
    receiver_idx = torch.nonzero(receivers).squeeze(1)
    sim = cosine_similarity_matrix(features)[dropped_idx][:, receiver_idx]
    target = receiver_idx[sim.argmax(dim=1)]  # original index of the receiver of each dropped token
    # Position of each token among the kept rows (only meaningful for kept tokens).
    row_of = torch.cumsum(keep_mask.long(), dim=0) - 1
    sums = features.float()[kept_idx].clone()
    counts = torch.ones(kept_idx.numel(), device=features.device)
    sums.index_add_(0, row_of[target], features.float()[dropped_idx])
    counts.index_add_(0, row_of[target], torch.ones(dropped_idx.numel(), device=features.device))
    return (sums / counts.unsqueeze(1)).to(features.dtype)
