"""The Qwen3-VL family (ViT with learned position embeddings and DeepStack mergers, Qwen3 decoder with
interleaved M-RoPE)."""

from . import adapter  # noqa: F401  (registers the adapter)
