"""The reward base class and the helpers every reward uses to read TRL's keyword arguments.

TRL (`GRPOTrainer._calculate_rewards`) calls each reward as `reward(prompts=..., completions=..., completion_ids=...,
trainer_state=..., log_metric=..., log_extra=..., **dataset_columns)`; glimpserl's trainer adds the pruning statistics
`prune_ratio`, `kept_tokens` and `visual_tokens` (one value per completion). A completion is a `str` for plain
prompts, or a list of message dicts (`[{"role": "assistant", "content": ...}]`) for conversational ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

# Keyword arguments TRL passes that are not dataset columns; left out of "available columns" in error messages.
TRL_KWARGS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_metric", "log_extra", "environments"}
)
PRUNING_FACTS = ("prune_ratio", "kept_tokens", "visual_tokens")


class Reward:
    """A picklable TRL reward: `reward(completions=..., **kwargs) -> list[float | None]`, `None` = not applicable.

    A callable class rather than a closure because TRL's async rollout workers pickle reward functions. TRL names
    each reward's logged metrics after `reward.__name__`, which defaults to the name the class was registered under
    and can be overridden per instance (`build_rewards` does so to tell two instances of one reward apart).
    """

    registry_name: ClassVar[str] = ""  # set by `@register`
    _display_name: str | None = None

    @property
    def __name__(self) -> str:  # TRL reads `__name__` from the callable it is given
        return self._display_name or self.registry_name or type(self).__name__

    @__name__.setter
    def __name__(self, value: str) -> None:
        self._display_name = value

    def __call__(self, completions: list, **kwargs: Any) -> list[float | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    def log(self, log_metric: Callable[[str, float], None] | None, key: str, values: Sequence[float]) -> None:
        """Log the mean of `values` as `rewards/<name>/<key>`; skipped when empty, because TRL averages logged
        values across processes and a NaN would poison the step's average."""
        if log_metric is not None and len(values) > 0:
            log_metric(f"rewards/{self.__name__}/{key}", float(sum(values) / len(values)))


def message_text(message: Any) -> str:
    """The text of one chat message: `content` may be a string, `None` (a pure tool call) or a list of typed
    blocks (`{"type": "text", "text": ...}`, `{"type": "image"}`), of which only the text blocks count."""
    content = message.get("content") if isinstance(message, dict) else message
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = [block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"]
    return "\n".join(part for part in parts if part)


def completion_text(completion: str | list[dict]) -> str:
    """The generated text of one completion, plain (`str`) or conversational (list of messages).

    With tool calls a conversational completion holds several assistant turns with tool results between them;
    only the assistant's own words count as its answer.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return message_text(completion)
    turns = [
        message_text(m) for m in completion if not isinstance(m, dict) or m.get("role", "assistant") == "assistant"
    ]
    return "\n".join(turn for turn in turns if turn)


def prompt_text(prompt: str | list[dict]) -> str:
    """The question of one prompt: the whole string, or the text of the last user message (images dropped)."""
    if isinstance(prompt, str):
        return prompt
    user_turns = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return message_text(user_turns[-1]) if user_turns else ""


def _available_columns(kwargs: dict) -> list[str]:
    return sorted(k for k in kwargs if k not in TRL_KWARGS)


def get_column(kwargs: dict, column: str, reward_name: str, size: int) -> list:
    """The dataset column `column` from TRL's reward kwargs, checked to hold one value per completion."""
    if column not in kwargs:
        raise ValueError(
            f"Reward '{reward_name}' needs the dataset column '{column}', but the batch has columns "
            f"{_available_columns(kwargs)}. Add the column to the dataset or set the reward's column parameter "
            f"to one of these."
        )
    values = list(kwargs[column])
    if len(values) != size:
        raise ValueError(f"Reward '{reward_name}': column '{column}' has {len(values)} values for {size} completions.")
    return values


def get_pruning_fact(kwargs: dict, fact: str, reward_name: str, size: int) -> list[float]:
    """One of the pruning statistics (`prune_ratio`, `kept_tokens`, `visual_tokens`) per completion, as floats."""
    if fact not in kwargs:
        raise ValueError(
            f"Reward '{reward_name}' needs the pruning fact '{fact}' for every completion, but the trainer did not "
            f"pass it (got {_available_columns(kwargs)}). The trainer must pass {list(PRUNING_FACTS)} to the reward "
            f"functions: use glimpserl's GRPO trainer, which adds them; a plain trl.GRPOTrainer does not."
        )
    values = [float(v) for v in kwargs[fact]]
    if len(values) != size:
        raise ValueError(f"Reward '{reward_name}': '{fact}' has {len(values)} values for {size} completions.")
    return values


def as_references(value: Any) -> list[str] | None:
    """A reference-answer cell as a list of accepted answers: a string, a number or a list of them; `None` or an
    empty list means the row has no reference (the reward returns `None` for it)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        refs = [str(v) for v in value if v is not None]
        return refs or None
    return [str(value)]
