"""The selector contract, the name registry, and helpers shared by every training-free selector.

A selector sees the visual tokens of ONE image and returns a boolean keep mask `[n]` with exactly
`keep` True entries. It never touches the model: the pruned forward gathers whatever signals the
selector `needs` (`attn_last`, `vision_attn`, `instruction`), calls `select`, and removes the dropped tokens.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable

import torch
from torch import Tensor

SIGNALS = frozenset({"attn_last", "vision_attn", "instruction"})
"""Optional signals a selector can ask for in `needs`: per-token `[n]` scores, or the instruction's token
features `[m, d]`."""
SIGNAL_NAMES = {
    "attn_last": "the last prompt token's attention at its layer",
    "vision_attn": "vision-encoder attention",
    "instruction": "the instruction's token features",
}


@dataclasses.dataclass(frozen=True)
class SelectorInputs:
    """What a selector sees of ONE image: features `[n, d]` (after the projector) and how many to keep
    (0 < keep <= n), plus the optional signals its `needs` name (None otherwise): attn_last `[n]` (attention from the
    last prompt token at layer K, head-averaged), vision_attn `[n]` (attention received inside the vision encoder),
    instruction `[m, d]` (input features of the prompt's text after the image, in the features' space), and a
    generator for selectors that draw at random."""

    features: Tensor
    keep: int
    attn_last: Tensor | None = None
    vision_attn: Tensor | None = None
    instruction: Tensor | None = None
    generator: torch.Generator | None = None

    @property
    def n(self) -> int:
        return self.features.shape[0]


class TokenSelector:
    """Chooses which visual tokens of one image survive. A selector declares the signals it `needs` (a subset of
    `SIGNALS`) and implements `choose`; callers call `select(**inputs)`, which checks the inputs first.

    Returns a bool mask `[n]` on `features.device` with exactly `keep` True entries.
    """

    needs: frozenset[str] = frozenset()

    def select(self, **inputs: object) -> Tensor:
        x = SelectorInputs(**inputs)
        check_inputs(self, x)
        return self.choose(x)

    def choose(self, x: SelectorInputs) -> Tensor:
        raise NotImplementedError


SELECTORS: dict[str, type] = {}
"""Selector name -> class. Filled by `register_selector`; read by `build_selector`."""


def register_selector(name: str) -> Callable[[type], type]:
    """Class decorator adding a selector to `SELECTORS`; a second class under the same name is an error."""

    def wrap(cls: type) -> type:
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} is already registered ({SELECTORS[name].__qualname__})")
        unknown = set(getattr(cls, "needs", ())) - SIGNALS
        if unknown:
            raise ValueError(f"selector {name!r} needs unknown signals {sorted(unknown)}; valid: {sorted(SIGNALS)}")
        SELECTORS[name] = cls
        return cls

    return wrap


def build_selector(name: str, **params: object) -> TokenSelector:
    """Instantiate the selector registered as `name`; unknown names and parameters fail here, not mid-run."""
    if name not in SELECTORS:
        raise ValueError(f"unknown token selector {name!r}; valid names: {', '.join(sorted(SELECTORS))}")
    cls = SELECTORS[name]
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    for key in params:
        if key not in accepted:
            raise ValueError(
                f"selector {name!r} has no parameter {key!r}; valid parameters: {', '.join(accepted) or '(none)'}"
            )
    return cls(**params)


def usable_selectors(available: frozenset[str]) -> list[str]:
    """Names of the selectors whose signals are all among `available` (what a model family feeds)."""
    return sorted(name for name, cls in SELECTORS.items() if set(cls.needs) <= set(available))


def check_signals(name: str, needs: frozenset[str], available: frozenset[str], family: str) -> None:
    """The one check that a selector's signals exist on a model family: a selector needing a signal the family
    does not feed is an error naming the selectors that do run there."""
    missing = sorted(set(needs) - set(available))
    if missing:
        what = " and ".join(SIGNAL_NAMES[signal] for signal in missing)
        raise ValueError(
            f"Pruner {name!r} needs {what}, which the {family} model family does not expose; use one of "
            f"{', '.join(usable_selectors(available))}."
        )


def keep_count(n: int, keep_ratio: float | None = None, budget: int | None = None) -> int:
    """How many of `n` visual tokens to keep: give exactly one of `keep_ratio` (fraction in (0, 1],
    rounded half up) or `budget` (a token count >= 1). The result is clamped to [1, n]."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of visual tokens) must be an int >= 1, got {n!r}")
    if (keep_ratio is None) == (budget is None):
        raise ValueError("give exactly one of keep_ratio (fraction in (0, 1]) or budget (token count >= 1)")
    if keep_ratio is not None:
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
            raise ValueError(f"keep_ratio must be in (0, 1] (0 excluded, 1 included), got {keep_ratio!r}")
        count = math.floor(n * keep_ratio + 0.5)
    else:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be an int >= 1, got {budget!r}")
        count = budget
    return max(1, min(n, count))


def check_inputs(selector: TokenSelector, x: SelectorInputs) -> None:
    """Shared argument checks: features `[n, d]`, 0 < keep <= n, every needed signal present with its shape
    (`[n]` for per-token scores, `[m, d]` with m >= 1 for `instruction`)."""
    features, keep = x.features, x.keep
    if features.dim() != 2 or features.shape[0] == 0:
        raise ValueError(f"features must be [n, d] with n >= 1, got shape {tuple(features.shape)}")
    n = features.shape[0]
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 < keep <= n:
        raise ValueError(f"keep must be an int in [1, {n}] for {n} visual tokens, got {keep!r}")
    for name in getattr(selector, "needs", ()):
        value = getattr(x, name)
        shape = "an [m, d] tensor" if name == "instruction" else "a [n] tensor"
        if value is None:
            raise ValueError(f"{type(selector).__name__} needs {name} ({shape}), got None")
        if name == "instruction":
            if value.dim() != 2 or value.shape[0] == 0 or value.shape[1] != features.shape[1]:
                raise ValueError(
                    f"instruction must have shape [m >= 1, {features.shape[1]}] to match features, got "
                    f"{tuple(value.shape)}"
                )
        elif value.shape != (n,):
            raise ValueError(f"{name} must have shape [{n}] to match features, got {tuple(value.shape)}")


def index_mask(indices: Tensor, n: int, device: torch.device) -> Tensor:
    """Bool mask `[n]` on `device`, True at `indices`."""
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[indices.to(device)] = True
    return mask


def top_k_mask(scores: Tensor, keep: int) -> Tensor:
    """Bool mask `[n]` of the `keep` largest scores; equal scores go to the lower index (stable sort)."""
    return index_mask(torch.sort(scores, descending=True, stable=True).indices[:keep], scores.shape[0], scores.device)


def cosine_similarity_matrix(features: Tensor) -> Tensor:
    """`[n, d]` -> `[n, n]` cosine similarities in float32 (a zero vector has similarity 0 to everything)."""
    unit = torch.nn.functional.normalize(features.float(), dim=-1)
    return unit @ unit.T
