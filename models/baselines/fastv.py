"""FastV: after decoder layer K, keep the visual tokens the last prompt token attends to most.

The caller supplies `attn_last [n]`: the attention weight (after softmax) that the last prompt token
pays to each visual token at layer K, averaged over heads. Ties go to the lower token index.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .registry import check_inputs, register_selector, top_k_mask


@register_selector("fastv")
@dataclasses.dataclass(frozen=True)
class FastVSelector:
    """Top-`keep` tokens by `attn_last`."""

    needs = frozenset({"attn_last"})

    def select(
        self,
        *,
        features: Tensor,
        keep: int,
        attn_last: Tensor | None = None,
        vision_attn: Tensor | None = None,
        instruction: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        check_inputs(self, features, keep, attn_last=attn_last)
        return top_k_mask(attn_last.float().to(features.device), keep)
