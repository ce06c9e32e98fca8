"""CDPruner (arXiv 2506.10967): a conditional determinantal point process picks a relevant AND diverse subset.

How it scores a subset of one image's visual tokens:
- similarity `S[i, j]`: cosine similarity of the visual token features (after the projector);
- relevance `r_i`: mean cosine similarity of token i to the instruction's token features, min-max rescaled to
  (0, 1] over the image (the published LLaVA recipe measures it in CLIP's joint space and flips its sign;
  glimpserl's pruned forward has no CLIP text tower, so it measures it in the language model's input space, where
  the instruction's token embeddings and the projected visual tokens live, and `negate` offers the flip);
- kernel `L = diag(r) S diag(r)`: a DPP over L prefers subsets whose tokens are relevant (large diagonal) and unlike
  each other (small off-diagonal); `theta` (optional) sharpens relevance to `exp(alpha * r)`,
  `alpha = theta / (2 * (1 - theta))`;
- selection: the greedy MAP search for the DPP (each step adds the token with the largest gain in log det L_Y,
  updated incrementally by a Cholesky-style recursion), `keep` steps. Ties go to the lower index. Once no token adds
  volume (every remaining gain is ~0: more picks than the feature rank), the rest are filled by relevance.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .registry import SelectorInputs, TokenSelector, cosine_similarity_matrix, index_mask, register_selector

GAIN_FLOOR = 1e-10


def cdpruner_relevance(features: Tensor, instruction: Tensor, negate: bool = False) -> Tensor:
    """Relevance `[n]` in (0, 1] of each visual token `features [n, d]` to the instruction tokens `[m, d]`."""
    unit_v = torch.nn.functional.normalize(features.float(), dim=-1)
    unit_t = torch.nn.functional.normalize(instruction.float().to(features.device), dim=-1)
    relevance = (unit_v @ unit_t.T).mean(-1)
    if negate:
        relevance = -relevance
    low, high = relevance.min(), relevance.max()
    return (relevance - low + 1e-6) / (high - low).clamp(min=1e-6)


def cdpruner_kernel(features: Tensor, relevance: Tensor, theta: float | None = None) -> Tensor:
    """`L = diag(q) S diag(q)` `[n, n]`, with q = relevance or exp(alpha * relevance) when theta is given."""
    quality = relevance.float()
    if theta is not None:
        quality = torch.exp(theta / (2.0 * (1.0 - theta)) * quality)
    return quality[:, None] * cosine_similarity_matrix(features) * quality[None, :]


def dpp_greedy(kernel: Tensor, keep: int, fallback: Tensor | None = None) -> Tensor:
    """Indices `[keep]` in pick order of the greedy MAP search for a DPP with kernel `[n, n]`.

    `gain[j]` is the squared residual norm of token j against the span of the picks so far, i.e. the factor by which
    det(L_Y) grows when j joins Y. Once every remaining gain is below `GAIN_FLOOR`, the rest follow `fallback`
    (scores, larger first; default: the kernel's diagonal).
    """
    n = kernel.shape[0]
    kernel = kernel.double()
    gain = kernel.diagonal().clone()
    basis = torch.zeros(keep, n, dtype=kernel.dtype, device=kernel.device)
    taken = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    order: list[int] = []
    for step in range(keep):
        gain = gain.masked_fill(taken, float("-inf"))
        pick = int(torch.argmax(gain))
        if gain[pick] <= GAIN_FLOOR:
            scores = (kernel.diagonal() if fallback is None else fallback.double()).masked_fill(taken, float("-inf"))
            rest = torch.sort(scores, descending=True, stable=True).indices[: keep - step]
            order.extend(int(i) for i in rest)
            break
        residual = (kernel[pick] - basis[:step, pick] @ basis[:step]) / gain[pick].sqrt()
        basis[step] = residual
        gain = gain - residual.square()
        taken[pick] = True
        order.append(pick)
    return torch.tensor(order, dtype=torch.long, device=kernel.device)


@register_selector("cdpruner")
@dataclasses.dataclass(frozen=True)
class CDPrunerSelector(TokenSelector):
    """The `keep` tokens of the greedy conditional-DPP search; needs the instruction's token features."""

    theta: float | None = None
    negate: bool = False

    needs = frozenset({"instruction"})

    def __post_init__(self) -> None:
        if self.theta is not None and not 0.0 < self.theta < 1.0:
            raise ValueError(f"theta must be in (0, 1) (or None for plain relevance), got {self.theta}")

    def choose(self, x: SelectorInputs) -> Tensor:
        relevance = cdpruner_relevance(x.features, x.instruction, self.negate)
        order = dpp_greedy(cdpruner_kernel(x.features, relevance, self.theta), x.keep, fallback=relevance)
        return index_mask(order, x.n, x.features.device)
