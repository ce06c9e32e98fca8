"""The reward registry: reward factories by name, built from recipe specs with their parameters checked.

A factory is any callable `factory(**params) -> reward`; usually a `Reward` subclass, whose `__init__` signature is
the reward's parameter list. Recipes name rewards and give their parameters and weights::

    rewards:
      - {name: vqa_accuracy, weight: 1.0, answer_column: answers}
      - {name: gated_prune_ratio, weight: 0.5, gate: exact_match, threshold: 1.0}
      - format

Everything is checked when the recipe is parsed, not at the first reward call: unknown names, unknown or missing
parameters and non-numeric weights raise a `ValueError` that says what to change.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from typing import Any

from .base import Reward

RewardFactory = Callable[..., Callable[..., list]]
_REGISTRY: dict[str, RewardFactory] = {}
_SPEC_KEYS = ("name", "weight")  # spec keys that are not reward parameters


def register(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Class/function decorator: register a reward factory under `name`; a name can be registered only once."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"A reward name must be a non-empty string, got {name!r}.")

    def decorator(factory: RewardFactory) -> RewardFactory:
        if name in _REGISTRY:
            raise ValueError(
                f"A reward named '{name}' is already registered ({_REGISTRY[name]!r}); pick another name."
            )
        if isinstance(factory, type) and issubclass(factory, Reward):
            factory.registry_name = name
        _REGISTRY[name] = factory
        return factory

    return decorator


def available_rewards() -> list[str]:
    """The registered reward names, sorted."""
    return sorted(_REGISTRY)


def _factory(name: str) -> RewardFactory:
    if name not in _REGISTRY:
        raise ValueError(f"Unknown reward '{name}'. Valid rewards: {available_rewards()}.")
    return _REGISTRY[name]


def check_params(name: str, params: dict[str, Any]) -> None:
    """Check `params` against the signature of reward `name`'s factory: no unknown and no missing parameters."""
    signature = inspect.signature(_factory(name))
    accepted = {
        p.name: p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    valid = sorted(accepted)
    unknown = sorted(set(params) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(
            f"Reward '{name}' has no parameter {unknown[0]!r} (got {unknown}). Valid parameters: {valid}."
        )
    missing = sorted(k for k, p in accepted.items() if p.default is inspect.Parameter.empty and k not in params)
    if missing:
        raise ValueError(
            f"Reward '{name}' needs parameter {missing[0]!r} (missing {missing}). Valid parameters: {valid}."
        )


def build_reward(name: str, **params: Any) -> Callable[..., list]:
    """Build reward `name` with `params`, after checking them against its factory's signature."""
    check_params(name, params)
    reward = _REGISTRY[name](**params)
    reward.__name__ = name  # TRL logs a reward under `__name__`; a factory may return an unnamed callable
    return reward


def parse_spec(spec: str | dict[str, Any]) -> tuple[str, float, dict[str, Any]]:
    """Split one recipe spec (a name, or `{"name": ..., "weight": 1.0, **params}`) into (name, weight, params)."""
    if isinstance(spec, str):
        return spec, 1.0, {}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"A reward spec is a name or a dict with a 'name' key, got {spec!r}.")
    params = {k: v for k, v in spec.items() if k not in _SPEC_KEYS}
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"Reward '{spec['name']}': weight must be a number, got {weight!r}.")
    return spec["name"], float(weight), params


def build_rewards(specs: list[str | dict[str, Any]]) -> tuple[list[Callable[..., list]], list[float]]:
    """Build the rewards of a recipe: returns `(reward_funcs, reward_weights)` for `trl.GRPOTrainer` /
    `GRPOConfig.reward_weights`.

    Two instances of the same reward get distinct `__name__`s (`exact_match`, `exact_match_2`) so that TRL logs
    them separately.
    """
    if not specs:
        raise ValueError(f"No rewards given. Valid rewards: {available_rewards()}.")
    parsed = [parse_spec(spec) for spec in specs]
    funcs, weights = [], []
    seen = Counter()
    for name, weight, params in parsed:
        reward = build_reward(name, **params)
        seen[name] += 1
        if seen[name] > 1:
            reward.__name__ = f"{name}_{seen[name]}"
        funcs.append(reward)
        weights.append(weight)
    return funcs, weights
