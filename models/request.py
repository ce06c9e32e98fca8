"""`PruneRequest`: what one pruned forward is asked to do (the `glimpse_*` keywords of a glimpse model's forward)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch

from .vip import GlimpseModule

GlimpseMode = Literal["prune", "mask", "off"]
MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(vip_logits [batch, seq], visual_mask [batch, seq]) -> additive key bias [batch, seq] for masked mode: the log
keep-probability of each visual token (0 = keep, very negative = drop). A relaxation returns it directly so that,
e.g., a straight-through estimator can be exact in value and smooth in gradient."""


@dataclass
class PruneRequest:
    """What one pruned forward is asked to do: the `glimpse_*` keywords of a glimpse model's forward."""

    mode: GlimpseMode = "prune"
    """"prune" (physical removal after layer K), "mask" (differentiable training mode) or "off" (the vanilla model)."""
    keep: torch.Tensor | None = None
    """[batch, >= prompt] bool: a keep decision to reuse instead of the VIP's (visual columns only)."""
    vip_logits: bool = True
    """With `keep` given, False skips the glimpse token and the VIP altogether (the result's logits are zeros)."""
    mask_fn: MaskFn | None = None
    """Masked mode only: VIP logits -> key bias (default: the hard decision, 0 / -inf)."""
    prompt_length: int | None = None
    """Columns of the prompt when a completion follows it (a training / log-prob pass); such a pass fills no cache."""
    noise: torch.Tensor | None = None
    """[batch, >= prompt] uniform noise: sample the keep mask from the VIP (Bernoulli) instead of thresholding it."""
    pruner: Any = None
    """A training-free pruner (`models.baselines.TrainingFreePruner`) deciding instead of the VIP."""
    teacher: bool = False
    """Masked mode only: also return the unpruned model's output, computed without gradient from this pass's vision
    encoder call and prompt layers 0..K (which pruning does not change), so the stage-1 teacher costs only its own
    completion columns through layers 0..K and layers K+1.. on every column."""

    PREFIX = "glimpse_"

    def __post_init__(self) -> None:
        if self.mode not in ("prune", "mask", "off"):
            raise ValueError(f"glimpse_mode must be 'prune', 'mask' or 'off', got {self.mode!r}.")
        if self.teacher and self.mode != "mask":
            raise ValueError(f"glimpse_teacher=True needs glimpse_mode='mask' (the training mode), got {self.mode!r}.")

    @classmethod
    def pop_from(cls, kwargs: dict) -> PruneRequest:
        """Take the `glimpse_*` keywords out of a forward's kwargs (None means the default)."""
        given = {f.name: kwargs.pop(cls.PREFIX + f.name) for f in fields(cls) if cls.PREFIX + f.name in kwargs}
        return cls(**{name: value for name, value in given.items() if value is not None})

    def cut_layer(self, glimpse: GlimpseModule) -> int:
        """The layer after which visual tokens are dropped: the glimpse's K, or a training-free pruner's own layer
        (-1 = before the first layer)."""
        own = getattr(self.pruner, "layer", None)
        return glimpse.config.layer if own is None else own

    @property
    def runs_glimpse(self) -> bool:
        """Whether the glimpse token and the VIP run (a reused decision whose logits nobody reads skips them)."""
        return self.pruner is None and (self.keep is None or self.vip_logits)
