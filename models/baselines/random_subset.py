"""Random: a uniformly random subset of `keep` visual tokens, reproducible through the generator."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .registry import check_inputs, register_selector


@register_selector("random")
@dataclasses.dataclass(frozen=True)
class RandomSelector:
    """Uniform subset of size `keep`. Pass a seeded `generator` for reproducible masks; without one the
    global torch RNG is used. The permutation is drawn on the generator's device, then moved."""

    needs = frozenset()

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
        check_inputs(self, features, keep)
        n = features.shape[0]
        device = generator.device if generator is not None else torch.device("cpu")
        chosen = torch.randperm(n, generator=generator, device=device)[:keep].to(features.device)
        mask = torch.zeros(n, dtype=torch.bool, device=features.device)
        mask[chosen] = True
        return mask
