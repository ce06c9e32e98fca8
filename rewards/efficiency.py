"""Efficiency rewards: pay for pruning visual tokens.

They read the pruning statistics glimpserl's trainer passes with every completion (`prune_ratio` = pruned / visual
tokens, `kept_tokens`, `visual_tokens`). Within a GRPO group these only teach something if the keep masks differ
between the group's rollouts (sampled masks); see docs/method.md section 3.

Paying for pruning alone invites pruning everything; `gated_prune_ratio` pays only for correct answers.
"""

from __future__ import annotations

from typing import Any

from .base import Reward, get_pruning_fact
from .registry import build_reward, parse_spec, register


@register("prune_ratio")
class PruneRatio(Reward):
    """The fraction of visual tokens pruned, times `scale`."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, completions: list, **kwargs: Any) -> list[float | None]:
        ratios = get_pruning_fact(kwargs, "prune_ratio", self.__name__, len(completions))
        return [self.scale * r for r in ratios]


@register("token_budget")
class TokenBudget(Reward):
    """1 while the kept visual tokens fit in `budget`, falling linearly to 0 at twice the budget.

    Args:
        budget: visual tokens a sample may keep for full reward.
    """

    def __init__(self, budget: int):
        if budget <= 0:
            raise ValueError(f"token_budget: budget must be a positive number of tokens, got {budget}.")
        self.budget = budget

    def __call__(self, completions: list, **kwargs: Any) -> list[float | None]:
        kept = get_pruning_fact(kwargs, "kept_tokens", self.__name__, len(completions))
        return [max(0.0, 1.0 - max(0.0, k - self.budget) / self.budget) for k in kept]


@register("gated_prune_ratio")
class GatedPruneRatio(Reward):
    """`scale * prune_ratio` for completions whose correctness score reaches `threshold`, else 0.

    The gate is another registered reward, built here (so its parameters are checked with the recipe); its own
    weight, if the gate spec has one, is ignored. Rows the gate cannot score (`None`) score `None`.

    Args:
        gate: the correctness reward: a name (`"exact_match"`) or a spec (`{"name": "vqa_accuracy",
            "answer_column": "answers"}`).
        threshold: gate score from which pruning is paid; with soft scores (VQA accuracy, ANLS) below 1 it
            also pays partially right answers.
        scale: reward for pruning every visual token of a correct answer.
    """

    def __init__(self, gate: str | dict[str, Any] = "exact_match", threshold: float = 0.5, scale: float = 1.0):
        name, _, params = parse_spec(gate)
        if name == "gated_prune_ratio":
            raise ValueError("gated_prune_ratio: the gate must be a correctness reward, not gated_prune_ratio itself.")
        self.gate = build_reward(name, **params)
        self.threshold = threshold
        self.scale = scale

    def __call__(self, completions: list, **kwargs: Any) -> list[float | None]:
        ratios = get_pruning_fact(kwargs, "prune_ratio", self.__name__, len(completions))
        log_metric = kwargs.pop("log_metric", None)  # the gate's own sub-scores would be logged twice
        scores = self.gate(completions=completions, **kwargs)
        gated = [(s >= self.threshold, r) for s, r in zip(scores, ratios, strict=True) if s is not None]
        self.log(log_metric, "gate_open", [float(is_open) for is_open, _ in gated])
        self.log(log_metric, "prune_ratio_gated", [r for is_open, r in gated if is_open])
        return [
            None if s is None else (self.scale * r if s >= self.threshold else 0.0)
            for s, r in zip(scores, ratios, strict=True)
        ]
