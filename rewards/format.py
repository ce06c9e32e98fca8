"""Format rewards: the completion's shape (reasoning and answer tags) and its length."""

from __future__ import annotations

import re
from typing import Any, Literal

from .base import Reward, completion_text
from .registry import register

THINK_ANSWER = r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$"


@register("format")
class Format(Reward):
    """1 if the whole completion matches `pattern` (dot matches newlines), else 0.

    Args:
        pattern: a regular expression; the default asks for `<think>...</think>` then `<answer>...</answer>`
            and nothing else. For answer-only completions use `^\\s*<answer>.*?</answer>\\s*$`.
    """

    def __init__(self, pattern: str = THINK_ANSWER):
        try:
            self._regex = re.compile(pattern, re.DOTALL)
        except re.error as error:
            raise ValueError(f"format: pattern {pattern!r} is not a valid regular expression: {error}.") from error
        self.pattern = pattern

    def __call__(self, completions: list, **kwargs: Any) -> list[float | None]:
        return [float(self._regex.fullmatch(completion_text(c)) is not None) for c in completions]


@register("length")
class Length(Reward):
    """0 up to `max_length`, then a penalty growing linearly to -1 at twice `max_length`.

    Args:
        max_length: longest completion without penalty.
        unit: `"tokens"` counts `completion_ids` (what the model generated), `"chars"` the completion's text.
    """

    def __init__(self, max_length: int, unit: Literal["tokens", "chars"] = "tokens"):
        if max_length <= 0:
            raise ValueError(f"length: max_length must be positive, got {max_length}.")
        if unit not in ("tokens", "chars"):
            raise ValueError(f"length: unit must be 'tokens' or 'chars', got {unit!r}.")
        self.max_length = max_length
        self.unit = unit

    def _lengths(self, completions: list, completion_ids: list | None) -> list[int]:
        if self.unit == "chars":
            return [len(completion_text(c)) for c in completions]
        if completion_ids is None:
            raise ValueError("length: unit='tokens' needs the `completion_ids` TRL passes; use unit='chars' without.")
        return [len(ids) for ids in completion_ids]

    def __call__(self, completions: list, completion_ids: list | None = None, **kwargs: Any) -> list[float | None]:
        lengths = self._lengths(completions, completion_ids)
        self.log(kwargs.get("log_metric"), "over_limit", [float(n > self.max_length) for n in lengths])
        return [0.0 - min(1.0, max(0, n - self.max_length) / self.max_length) for n in lengths]  # 0.0, never -0.0
