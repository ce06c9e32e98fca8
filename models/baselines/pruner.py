"""`TrainingFreePruner`: a selector + a keep budget, used by the pruned forward in place of the VIP.

    pruner = TrainingFreePruner.build("gprune", keep_ratio=0.1)
    model(**inputs, glimpse_pruner=pruner)          # or model.generate(..., glimpse_pruner=pruner)

Removal, positions, KV gathering and batching are the glimpse path's own; only the keep decision differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .registry import TokenSelector, build_selector, keep_count


@dataclass
class TrainingFreePruner:
    selector: TokenSelector
    keep_ratio: float | None = None
    budget: int | None = None
    seed: int = 0
    name: str = field(default="")

    @classmethod
    def build(cls, name: str, keep_ratio: float | None = None, budget: int | None = None, seed: int = 0, **params):
        if (keep_ratio is None) == (budget is None):
            raise ValueError(f"Pruner {name!r}: give exactly one of keep_ratio or budget.")
        keep_count(1, keep_ratio=keep_ratio, budget=budget)  # validates the range now, not at the first batch
        return cls(build_selector(name, **params), keep_ratio, budget, seed, name)

    @property
    def needs_attn_last(self) -> bool:
        return "attn_last" in self.selector.needs

    def keep_mask(
        self,
        features: torch.Tensor,
        visual: torch.Tensor,
        segments: list[list[tuple[int, int]]],
        attn_last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[batch, seq] bool keep decision; features: [batch, seq, hidden] projector outputs, attn_last [batch, seq]."""
        if "vision_attn" in self.selector.needs:
            raise ValueError(
                f"Pruner {self.name!r} needs vision-encoder attention, which the Qwen2-VL path does not expose; "
                "use gprune, fastv, divprune or random."
            )
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        keep = ~visual
        for b, runs in enumerate(segments):
            for start, end in runs:
                n = end - start
                chosen = self.selector.select(
                    features=features[b, start:end].float(),
                    keep=keep_count(n, keep_ratio=self.keep_ratio, budget=self.budget),
                    attn_last=None if attn_last is None else attn_last[b, start:end].float(),
                    vision_attn=None,
                    generator=generator,
                )
                keep[b, start:end] = chosen.to(keep.device)
        return keep
