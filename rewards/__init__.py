"""Rewards for GRPO: a registry of reward factories, built from recipe specs and combined by weights.

    from glimpserl.rewards import build_rewards
    funcs, weights = build_rewards(["exact_match", {"name": "gated_prune_ratio", "weight": 0.5}])

Every reward follows TRL's contract (keyword arguments in, `list[float | None]` out, `None` = not applicable) and
is registered by importing its module below.
"""

from . import choice, correctness, efficiency, format, judge  # noqa: F401 - importing registers the rewards
from .base import Reward, completion_text
from .registry import available_rewards, build_reward, build_rewards, check_params, parse_spec, register

__all__ = [
    "Reward",
    "available_rewards",
    "build_reward",
    "build_rewards",
    "check_params",
    "completion_text",
    "parse_spec",
    "register",
]
