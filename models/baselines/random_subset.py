"""Random: a uniformly random subset of `keep` visual tokens, reproducible through the generator."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .registry import SelectorInputs, TokenSelector, index_mask, register_selector


@register_selector("random")
@dataclasses.dataclass(frozen=True)
class RandomSelector(TokenSelector):
    """Uniform subset of size `keep`. Pass a seeded `generator` for reproducible masks; without one the
    global torch RNG is used. The permutation is drawn on the generator's device, then moved."""

    needs = frozenset()

    def choose(self, x: SelectorInputs) -> Tensor:
        device = x.generator.device if x.generator is not None else torch.device("cpu")
        chosen = torch.randperm(x.n, generator=x.generator, device=device)[: x.keep]
        return index_mask(chosen, x.n, x.features.device)
