"""DivPrune: keep a maximally diverse subset of visual tokens (greedy max-min diversity).

Distance is the cosine distance `1 - cos(x_i, x_j)` of the L2-normalised features.
- **Start**: the token whose nearest other token is farthest away (largest minimum distance to all
  others), i.e. the most isolated token. Deterministic, and scale-free unlike "largest norm".
- **Then** repeatedly add the unselected token whose minimum distance to the selected set is the
  largest. Every argmax breaks ties towards the lower token index (`torch.argmax` returns the first).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .registry import SelectorInputs, TokenSelector, cosine_similarity_matrix, index_mask, register_selector


def divprune_order(features: Tensor, keep: int) -> Tensor:
    """Indices `[keep]` (long) of the tokens of `features [n, d]` in the order the greedy search picks them."""
    n = features.shape[0]
    dist = 1.0 - cosine_similarity_matrix(features)
    if n == 1:
        return torch.zeros(1, dtype=torch.long, device=features.device)
    nearest_other = dist.masked_fill(torch.eye(n, dtype=torch.bool, device=dist.device), float("inf")).amin(dim=1)
    order = [int(torch.argmax(nearest_other))]
    # Distance from each token to the selected set; -inf marks selected tokens so they are never re-picked.
    to_selected = dist[order[0]].clone()
    to_selected[order[0]] = float("-inf")
    for _ in range(keep - 1):
        pick = int(torch.argmax(to_selected))
        order.append(pick)
        to_selected = torch.minimum(to_selected, dist[pick])  # -inf entries stay -inf
        to_selected[pick] = float("-inf")
    return torch.tensor(order, dtype=torch.long, device=features.device)


@register_selector("divprune")
@dataclasses.dataclass(frozen=True)
class DivPruneSelector(TokenSelector):
    """The first `keep` tokens of `divprune_order`; needs only the features."""

    needs = frozenset()

    def choose(self, x: SelectorInputs) -> Tensor:
        return index_mask(divprune_order(x.features, x.keep), x.n, x.features.device)
