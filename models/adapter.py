"""The seam between glimpserl and a model family: one `VLMAdapter` per family, looked up by `model_type`.

Nothing outside `models/` branches on the model family; it asks the adapter.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

_ADAPTERS: dict[str, VLMAdapter] = {}


class VLMAdapter:
    """What the family-agnostic glimpse code needs from one model family."""

    model_types: tuple[str, ...] = ()

    def inner_model(self, model: nn.Module) -> nn.Module:
        """The module that TRL's fused LM head calls and that pruning lives in."""
        raise NotImplementedError

    def text_model(self, inner: nn.Module) -> nn.Module:
        raise NotImplementedError

    def num_vision_layers(self, inner: nn.Module) -> int:
        raise NotImplementedError

    def vision_size(self, inner: nn.Module) -> int:
        raise NotImplementedError

    def vision_encoder(self, inner: nn.Module) -> nn.Module:
        """The vision tower (with its projector/merger): what `freeze_vision` freezes."""
        raise NotImplementedError

    def rotary(self) -> Callable:
        """The family's own (q, k, cos, sin) -> (q, k) rotary function, so the glimpse rotates exactly like the model."""
        raise NotImplementedError

    def signature(self, model: nn.Module) -> dict:
        """Shape facts a glimpse checkpoint must match to be loaded onto this model."""
        text = self.text_model(self.inner_model(model))
        return {
            "model_type": model.config.model_type,
            "text_hidden_size": text.config.hidden_size,
            "text_layers": text.config.num_hidden_layers,
            "text_heads": text.config.num_attention_heads,
            "vision_size": self.vision_size(self.inner_model(model)),
            "vision_layers": self.num_vision_layers(self.inner_model(model)),
        }

    def lora_target_modules(self) -> str:
        """Regex (PEFT full match) of the language-model linears LoRA adapts; vision blocks reuse the same names."""
        raise NotImplementedError

    def install(self, model: nn.Module) -> None:
        """Swap in the glimpse-aware forward of the inner and outer model classes."""
        raise NotImplementedError

    def embedding_scale(self, model: nn.Module) -> float:
        """Typical RMS of the base model's token embeddings (the glimpse input starts at this scale)."""
        weight = self.text_model(self.inner_model(model)).get_input_embeddings().weight
        if weight.numel() == 0:  # ZeRO-3 partitions parameters to empty placeholders; any sane scale works
            return 1.0
        with torch.no_grad():
            return float(weight.float().pow(2).mean(-1).sqrt().mean())


def register_adapter(adapter: VLMAdapter) -> VLMAdapter:
    for model_type in adapter.model_types:
        if model_type in _ADAPTERS:
            raise ValueError(f"An adapter for model_type {model_type!r} is already registered.")
        _ADAPTERS[model_type] = adapter
    return adapter


def supported_model_types() -> list[str]:
    return sorted(_ADAPTERS)


def freeze_vision(model: nn.Module) -> None:
    """requires_grad off on the vision encoder and its projector (tune the language model only)."""
    adapter = get_adapter(model)
    for p in adapter.vision_encoder(adapter.inner_model(model)).parameters():
        p.requires_grad_(False)


def get_adapter(model: nn.Module) -> VLMAdapter:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise ValueError(
            f"glimpserl does not support model_type {model_type!r} ({type(model).__name__}); supported model types: "
            f"{supported_model_types()}. Load one of those, e.g. Qwen2_5_VLForConditionalGeneration."
        )
    return _ADAPTERS[model_type]
