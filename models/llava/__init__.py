"""The LLaVA-1.5 family (CLIP vision tower, MLP projector, Llama / Vicuna decoder)."""

from . import adapter  # noqa: F401  (registers the adapter)
