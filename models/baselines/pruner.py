"""`TrainingFreePruner`: a selector + a keep budget (+ optionally its own layer), used by the pruned forward in place
of the VIP.

    pruner = TrainingFreePruner.build("gprune", keep_ratio=0.1)
    model(**inputs, glimpse_pruner=pruner)          # or model.generate(..., glimpse_pruner=pruner)
    TrainingFreePruner.build("gprune", keep_ratio=0.1, layer=-1)   # prune the LLM's input (before layer 0)

Removal, positions, KV gathering and batching are the glimpse path's own; only the keep decision differs. By default
tokens are dropped after the glimpse's layer K (same layer, same budget: a comparison of WHICH tokens to keep);
`layer` moves the cut to the pruner's own operating point, e.g. -1 for methods that prune before the language model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .registry import TokenSelector, build_selector, keep_count

INPUT_LAYER = -1
"""`layer` value of a pruner that drops tokens before the first decoder layer (the LLM never sees them)."""


@dataclass
class TrainingFreePruner:
    selector: TokenSelector
    keep_ratio: float | None = None
    budget: int | None = None
    seed: int = 0
    name: str = field(default="")
    layer: int | None = None
    """Decoder layer after which tokens are dropped (-1: before the first); None = the glimpse's layer K."""

    @classmethod
    def build(
        cls,
        name: str,
        keep_ratio: float | None = None,
        budget: int | None = None,
        seed: int = 0,
        layer: int | None = None,
        **params,
    ):
        if (keep_ratio is None) == (budget is None):
            raise ValueError(f"Pruner {name!r}: give exactly one of keep_ratio or budget.")
        keep_count(1, keep_ratio=keep_ratio, budget=budget)  # validates the range now, not at the first batch
        selector = build_selector(name, **params)
        if layer is not None and layer < INPUT_LAYER:
            raise ValueError(f"Pruner {name!r}: layer must be >= -1 (-1 = before the first layer), got {layer}.")
        if layer == INPUT_LAYER and "attn_last" in selector.needs:
            raise ValueError(f"Pruner {name!r} reads attention at its layer, so it cannot prune the input (layer -1).")
        return cls(selector, keep_ratio, budget, seed, name, layer)

    @property
    def needs_attn_last(self) -> bool:
        return "attn_last" in self.selector.needs

    def keep_mask(
        self,
        features: torch.Tensor,
        visual: torch.Tensor,
        segments: list[list[tuple[int, int]]],
        attn_last: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        vision_attn: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[batch, seq] bool keep decision.

        features: [batch, seq, hidden] input features (projector outputs at visual columns, token embeddings
        elsewhere); attn_last, vision_attn: [batch, seq]; text_mask: [batch, seq] bool, the prompt's real text
        columns (the instruction of each sample is its text after its last image). The model family checked that
        the signals the selector needs are there (`VLMAdapter.check_pruner`).
        """
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        keep = ~visual
        for b, runs in enumerate(segments):
            instruction = None
            if "instruction" in self.selector.needs:
                after = text_mask[b].clone()
                after[: runs[-1][1]] = False
                instruction = features[b, after].float()
            for start, end in runs:
                n = end - start
                chosen = self.selector.select(
                    features=features[b, start:end].float(),
                    keep=keep_count(n, keep_ratio=self.keep_ratio, budget=self.budget),
                    attn_last=None if attn_last is None else attn_last[b, start:end].float(),
                    vision_attn=None if vision_attn is None else vision_attn[b, start:end].float(),
                    instruction=instruction,
                    generator=generator,
                )
                keep[b, start:end] = chosen.to(keep.device)
        return keep
