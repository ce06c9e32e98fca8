"""The Qwen2-VL / Qwen2.5-VL family."""

from . import adapter  # noqa: F401  (registers the adapters)
