"""The seam between glimpserl and a model family: one `VLMAdapter` per family, looked up by `model_type`.

Everything family-specific that the pruned forward, the trainers, data loading, evaluation, export and the CLI need is
declared here and implemented in `models/<family>/adapter.py` (with that family's `modeling.py` and `tiny.py`).
Nothing outside `models/<family>/` names a family's modules, inputs or position layout; it asks the adapter.

A family folder registers its adapters when imported; `load_families` imports every folder under `models/` that
holds an `adapter.py`, so adding a family is adding a folder.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .inputs import GlimpseInputs
    from .vip import GlimpseModule

_ADAPTERS: dict[str, VLMAdapter] = {}

LANGUAGE_MODEL_LINEARS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
"""PEFT full-match regex of the language model's linears in the transformers 5 layout of a VLM (the vision blocks
reuse the same layer names, so a plain name list would adapt them too)."""


class VLMAdapter(ABC):
    """What the family-agnostic glimpse code needs from one model family.

    Module paths: `model` is the `...ForConditionalGeneration`, `inner` the module TRL's fused LM head calls (where
    pruning lives), `text` the decoder with `.layers`, `.norm`, `.rotary_emb` and Llama-style layers.
    Positions: the pruned forward keeps rotary positions as `[axes, batch, seq]` (any number of axes) and only asks
    the adapter to hand them to the decoder in the decoder's own layout.
    """

    model_types: tuple[str, ...] = ()
    """The `config.model_type` values this adapter serves."""
    processor_types: tuple[type, ...] = ()
    """Processor classes of this family: pixel settings and downsampling are the family's business."""
    pruner_signals: frozenset[str] = frozenset({"attn_last", "instruction"})
    """Signals this family feeds training-free selectors (see `models.baselines.SIGNALS`)."""
    dynamic_resolution: bool = False
    """Whether visual tokens per image follow the image size (min/max_pixels and the downsampling baseline apply)."""
    default_readout: str = "logits"
    """The glimpse read-out the method uses on this family (GlimpseConfig.readout when left unset)."""

    @property
    def family(self) -> str:
        """A readable name for messages."""
        return "/".join(self.model_types)

    # ---- modules -------------------------------------------------------------------------------------------------

    @abstractmethod
    def inner_model(self, model: nn.Module) -> nn.Module:
        """The module that TRL's fused LM head calls and that pruning lives in."""

    @abstractmethod
    def text_model(self, inner: nn.Module) -> nn.Module:
        """The language-model decoder inside `inner`."""

    @abstractmethod
    def vision_modules(self, inner: nn.Module) -> list[nn.Module]:
        """The vision tower and its projector/merger: what `freeze_vision` freezes."""

    @abstractmethod
    def num_vision_layers(self, inner: nn.Module) -> int:
        """Blocks of the vision encoder (vision_feature_layers index them, 0-based: the output of block i)."""

    @abstractmethod
    def vision_size(self, inner: nn.Module) -> int:
        """Width of the vision-encoder features that condition the VIP."""

    def lora_target_modules(self) -> str:
        """Regex (PEFT full match) of the language-model linears LoRA adapts."""
        return LANGUAGE_MODEL_LINEARS

    def default_feature_layers(self, inner: nn.Module, count: int) -> list[int] | None:
        """Vision blocks feeding the VIP when the config names none (None: evenly spaced from the last block)."""
        return None

    # ---- the pruned forward --------------------------------------------------------------------------------------

    @abstractmethod
    def prepare(
        self, inner: nn.Module, glimpse: GlimpseModule, batch: dict[str, Any], vision_attention: bool = False
    ) -> GlimpseInputs:
        """Turn the inner model's forward arguments (`batch`: every named parameter of its vanilla forward) into the
        decoder inputs: embeddings with the image features in, visual mask, positions `[axes, batch, seq]`, VIP
        vision features and token grids. `vision_attention`: also compute the attention each visual token receives
        inside the vision encoder (only families with "vision_attn" in `pruner_signals`). Raises ValueError on
        inputs the family's glimpse cannot prune (e.g. videos)."""

    @abstractmethod
    def rotary(self) -> Callable:
        """The family's own (q, k, cos, sin) -> (q, k) rotary function, so side tokens rotate exactly like the model."""

    @abstractmethod
    def decoder_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Positions `[axes, batch, seq]` in the layout the decoder (and its rotary embedding) takes."""

    def rotary_tables(self, text: nn.Module, hidden: torch.Tensor, positions: torch.Tensor):
        """The decoder's (cos, sin) for hidden states [batch, seq, hidden] at positions [axes, batch, seq]."""
        return text.rotary_emb(hidden, self.decoder_positions(positions))

    def install(self, model: nn.Module) -> None:
        """Swap in the glimpse-aware forward of the inner and outer model classes."""
        from .classes import glimpse_class

        inner = self.inner_model(model)
        inner.__class__ = glimpse_class(type(inner), inner=True)
        model.__class__ = glimpse_class(type(model), inner=False)

    # ---- processors ----------------------------------------------------------------------------------------------

    def image_token_id(self, processor) -> int:
        """Id of the token that stands for one visual token in the processor's output."""
        return int(processor.image_token_id)

    @abstractmethod
    def set_pixel_bounds(self, processor, min_pixels: int | None, max_pixels: int | None) -> None:
        """Bound the image size (and so the visual tokens per image) of `processor`, in place; None = keep."""

    @abstractmethod
    def shrink_kwargs(self, processor, fraction: float) -> dict:
        """Processor call keywords under which images shrunk to `fraction` of their pixels stay shrunk (the
        downsampling baseline); raises ValueError when the family's image size is fixed."""

    # ---- tiny offline models -------------------------------------------------------------------------------------

    @abstractmethod
    def build_tiny_model(self, seed: int = 0, **kwargs) -> nn.Module:
        """A tiny random model of this family (fp32, eval mode), whose token ids agree with `build_tiny_processor`."""

    @abstractmethod
    def build_tiny_processor(self, **kwargs):
        """The processor of the tiny model, built offline."""

    @abstractmethod
    def save_tiny(self, out_dir, seed: int = 0, **kwargs):
        """Write the tiny model and its processor to `out_dir` (both reload offline with from_pretrained)."""

    # ---- derived facts -------------------------------------------------------------------------------------------

    def signature(self, model: nn.Module) -> dict:
        """Shape facts a glimpse checkpoint must match to be loaded onto this model."""
        inner = self.inner_model(model)
        text = self.text_model(inner)
        return {
            "model_type": model.config.model_type,
            "text_hidden_size": text.config.hidden_size,
            "text_layers": text.config.num_hidden_layers,
            "text_heads": text.config.num_attention_heads,
            "vision_size": self.vision_size(inner),
            "vision_layers": self.num_vision_layers(inner),
        }

    def embedding_scale(self, model: nn.Module) -> float:
        """Typical RMS of the base model's token embeddings (the glimpse input starts at this scale)."""
        weight = self.text_model(self.inner_model(model)).get_input_embeddings().weight
        if weight.numel() == 0:  # ZeRO-3 partitions parameters to empty placeholders; any sane scale works
            return 1.0
        with torch.no_grad():
            return float(weight.float().pow(2).mean(-1).sqrt().mean())

    def check_pruner(self, name: str, needs: frozenset[str]) -> None:
        """Fail when a training-free selector needs a signal this family does not feed."""
        from .baselines.registry import check_signals

        check_signals(name, needs, self.pruner_signals, self.family)


def register_adapter(adapter: VLMAdapter) -> VLMAdapter:
    for model_type in adapter.model_types:
        if model_type in _ADAPTERS:
            raise ValueError(f"An adapter for model_type {model_type!r} is already registered.")
        _ADAPTERS[model_type] = adapter
    return adapter


def load_families() -> None:
    """Import every family folder under `models/` (a package with an `adapter.py`), which registers its adapters."""
    here = Path(__file__).parent
    for info in pkgutil.iter_modules([str(here)]):
        if info.ispkg and (here / info.name / "adapter.py").is_file():
            importlib.import_module(f"{__package__}.{info.name}")


def supported_model_types() -> list[str]:
    load_families()
    return sorted(_ADAPTERS)


def adapter_for_type(model_type: str) -> VLMAdapter:
    """The adapter serving `model_type`; an unknown type is an error listing the supported ones."""
    load_families()
    if model_type not in _ADAPTERS:
        raise ValueError(f"Unknown model family {model_type!r}; supported model types: {supported_model_types()}.")
    return _ADAPTERS[model_type]


def get_adapter(model: nn.Module) -> VLMAdapter:
    load_families()
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _ADAPTERS:
        raise ValueError(
            f"glimpserl does not support model_type {model_type!r} ({type(model).__name__}); supported model types: "
            f"{supported_model_types()}. Load a model of one of those families."
        )
    return _ADAPTERS[model_type]


def processor_adapter(processor) -> VLMAdapter:
    """The adapter of the family a processor belongs to: the one naming the processor's own class or, failing that,
    its closest base (a family's processor may derive from another family's)."""
    load_families()
    mro = type(processor).__mro__
    matches = [
        (min(mro.index(cls) for cls in adapter.processor_types if cls in mro), order, adapter)
        for order, adapter in enumerate(dict.fromkeys(_ADAPTERS.values()))
        if isinstance(processor, adapter.processor_types)
    ]
    if matches:
        return min(matches, key=lambda match: match[:2])[2]
    raise ValueError(
        f"{type(processor).__name__} is not the processor of a supported model family ({supported_model_types()})."
    )


def freeze_vision(model: nn.Module) -> None:
    """requires_grad off on the vision encoder and its projector (tune the language model only)."""
    adapter = get_adapter(model)
    for module in adapter.vision_modules(adapter.inner_model(model)):
        for p in module.parameters():
            p.requires_grad_(False)
