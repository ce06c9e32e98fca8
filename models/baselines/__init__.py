"""Training-free visual-token selectors (baselines to compare GlimpsePrune against).

Each selector looks at the visual tokens of ONE image and returns a bool keep mask `[n]` with exactly
`keep` True entries; the pruned forward does the removal. Build one by name:

    selector = build_selector("gprune", iterations=5)
    keep = keep_count(n, keep_ratio=0.5)
    mask = selector.select(features=feats, keep=keep)  # the fields of SelectorInputs, as keywords

Names: `gprune` (graph propagation, arXiv 2501.02268), `fastv` (attention of the last prompt token at
layer K; needs `attn_last`), `divprune` (greedy max-min diversity), `cdpruner` (conditional DPP over
instruction relevance and feature similarity, arXiv 2506.10967; needs `instruction`), `visionzip`
(vision-encoder attention + spread contextual tokens; needs `vision_attn`), `random`. Downsampling (a
lower max_pixels) is a baseline too, but it changes the input, not the selection, so it is not here.
"""

# Importing each selector module registers it in SELECTORS.
from .cdpruner import CDPrunerSelector, cdpruner_kernel, cdpruner_relevance, dpp_greedy
from .divprune import DivPruneSelector, divprune_order
from .fastv import FastVSelector
from .gprune import GPruneSelector, gprune_scores, gprune_transition
from .pruner import TrainingFreePruner
from .random_subset import RandomSelector
from .registry import (
    SELECTORS,
    SIGNALS,
    SelectorInputs,
    TokenSelector,
    build_selector,
    check_signals,
    keep_count,
    register_selector,
    top_k_mask,
    usable_selectors,
)
from .visionzip import VisionZipSelector, merge_into_kept, visionzip_split

__all__ = [
    "SELECTORS",
    "CDPrunerSelector",
    "SIGNALS",
    "DivPruneSelector",
    "FastVSelector",
    "GPruneSelector",
    "RandomSelector",
    "SelectorInputs",
    "TokenSelector",
    "TrainingFreePruner",
    "VisionZipSelector",
    "build_selector",
    "check_signals",
    "cdpruner_kernel",
    "cdpruner_relevance",
    "dpp_greedy",
    "divprune_order",
    "gprune_scores",
    "gprune_transition",
    "keep_count",
    "merge_into_kept",
    "register_selector",
    "top_k_mask",
    "usable_selectors",
    "visionzip_split",
]
