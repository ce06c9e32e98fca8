"""Glimpse token, VIP and the pruned forward pass for Hugging Face VLMs."""

from .adapter import (
    VLMAdapter,
    adapter_for_type,
    freeze_vision,
    get_adapter,
    processor_adapter,
    supported_model_types,
)
from .config import GlimpseConfig
from .forward import GlimpseCacheState
from .glimpse import (
    add_glimpse,
    check_glimpse_checkpoint,
    glimpse_module,
    has_glimpse,
    load_glimpse,
    pruning_module,
    read_glimpse_config,
    save_glimpse,
)
from .pruning import GlimpseResult
from .request import PruneRequest

__all__ = [
    "GlimpseCacheState",
    "GlimpseConfig",
    "GlimpseResult",
    "PruneRequest",
    "VLMAdapter",
    "adapter_for_type",
    "add_glimpse",
    "check_glimpse_checkpoint",
    "freeze_vision",
    "get_adapter",
    "glimpse_module",
    "has_glimpse",
    "load_glimpse",
    "processor_adapter",
    "pruning_module",
    "read_glimpse_config",
    "save_glimpse",
    "supported_model_types",
]
