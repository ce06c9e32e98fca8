"""FastV: after decoder layer K, keep the visual tokens the last prompt token attends to most.

The caller supplies `attn_last [n]`: the attention weight (after softmax) that the last prompt token
pays to each visual token at layer K, averaged over heads. Ties go to the lower token index.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from .registry import SelectorInputs, TokenSelector, register_selector, top_k_mask


@register_selector("fastv")
@dataclasses.dataclass(frozen=True)
class FastVSelector(TokenSelector):
    """Top-`keep` tokens by `attn_last`."""

    needs = frozenset({"attn_last"})

    def choose(self, x: SelectorInputs) -> Tensor:
        return top_k_mask(x.attn_last.float().to(x.features.device), x.keep)
