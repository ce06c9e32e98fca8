"""Attach, save and load the glimpse token + VIP on a loaded Hugging Face VLM."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .adapter import get_adapter
from .config import GlimpseConfig
from .vip import GlimpseModule

WEIGHTS_NAME = "glimpse.safetensors"
CONFIG_NAME = "glimpse_config.json"


def add_glimpse(model: nn.Module, config: GlimpseConfig | None = None) -> nn.Module:
    """Attach a new glimpse token and VIP to `model` (in place) and return it.

    From then on every forward that carries images (and `generate`) prunes visual tokens after layer K.
    The new parameters live in the inner model (`glimpse_module(model)` finds them); everything else is untouched and `save_pretrained` keeps
    writing the base weights only (use `save_glimpse` for the glimpse).
    """
    adapter = get_adapter(model)
    inner = adapter.inner_model(model)
    if hasattr(inner, "glimpse"):
        raise ValueError("This model already has a glimpse; load new weights with load_glimpse instead.")
    text = adapter.text_model(inner)
    config = config or GlimpseConfig()
    vision_layers = adapter.num_vision_layers(inner)
    config = config.resolve(
        text.config.num_hidden_layers,
        vision_layers,
        readout=adapter.default_readout,
        feature_layers=adapter.default_feature_layers(inner, config.vip_num_blocks),
    )
    module = GlimpseModule(
        config,
        text_hidden_size=text.config.hidden_size,
        num_readout_heads=text.config.num_attention_heads,
        vision_size=adapter.vision_size(inner),
        input_scale=adapter.embedding_scale(model),
    )
    reference = text.get_input_embeddings().weight
    inner.glimpse = module.to(device=reference.device, dtype=reference.dtype)
    inner.glimpse_adapter = adapter
    adapter.install(model)
    model._keys_to_ignore_on_save = set(model._keys_to_ignore_on_save or ()) | {
        name for name, _ in model.named_parameters() if ".glimpse." in f".{name}"
    }
    model.config.glimpse = config.to_dict()
    return model


def pruning_module(model: nn.Module) -> nn.Module:
    """The module that owns the glimpse and runs the pruned forward (the family's inner model), found through any
    PEFT / DDP / DeepSpeed wrapper. The one way the project locates a glimpse: `glimpse_module` and `has_glimpse`
    ask this."""
    for module in model.modules():
        if isinstance(getattr(module, "glimpse", None), GlimpseModule):
            return module
    raise ValueError("This model has no glimpse: call glimpserl.models.add_glimpse(model, config) first.")


def glimpse_module(model: nn.Module) -> GlimpseModule:
    """The glimpse module of a model prepared by `add_glimpse` (also through a PEFT wrapper)."""
    return pruning_module(model).glimpse


def has_glimpse(model: nn.Module) -> bool:
    try:
        pruning_module(model)
    except ValueError:
        return False
    return True


def _signature(model: nn.Module) -> dict:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return get_adapter(base).signature(base)


def save_glimpse(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the glimpse weights (safetensors) and config + base-model signature (JSON) to `directory`.

    Files are written to temporary names and renamed, so an interrupted save never leaves a complete-looking pair.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = glimpse_module(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    meta = {"config": module.config.to_dict(), "base": _signature(model), "format": 1}
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(meta, f, indent=2)
        # Weights first, config last: a reader treats the config as the "complete" marker.
        os.replace(os.path.join(tmp, WEIGHTS_NAME), directory / WEIGHTS_NAME)
        os.replace(os.path.join(tmp, CONFIG_NAME), directory / CONFIG_NAME)
    return directory


def read_glimpse_config(directory: str | os.PathLike) -> tuple[GlimpseConfig, dict]:
    """(config, base-model signature) of a glimpse checkpoint; a damaged config file is an error naming it."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"No glimpse checkpoint in {directory}: {CONFIG_NAME} is missing.")
    damaged = f"{path} is damaged ({{}}): save or export the glimpse again, or point at another checkpoint."
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(damaged.format(f"not valid JSON: {err}")) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ValueError(damaged.format("no 'config' mapping"))
    try:
        config = GlimpseConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(damaged.format(err)) from None
    return config, meta.get("base", {})


def check_glimpse_checkpoint(directory: str | os.PathLike) -> GlimpseConfig:
    """Read a glimpse checkpoint's config and check that its weights file is whole, without loading any tensor or
    model: run before a model loads, so a damaged checkpoint fails in a second, naming the file."""
    config, _ = read_glimpse_config(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"No glimpse weights in {directory}: {WEIGHTS_NAME} is missing.")
    try:
        with safe_open(str(weights), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{weights} is not a readable safetensors file ({err}): it is truncated or damaged; save or export the "
            "glimpse again, or point at another checkpoint."
        ) from None
    return config


def load_glimpse(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load glimpse weights saved by `save_glimpse` onto `model` (attaching a glimpse first if it has none).

    Fails with a clear message when the checkpoint was trained on a base model of a different shape.
    """
    check_glimpse_checkpoint(directory)
    config, saved_base = read_glimpse_config(directory)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    current = get_adapter(base).signature(base)
    diffs = {k: (v, current.get(k)) for k, v in saved_base.items() if current.get(k) != v}
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {a} vs model {b}" for k, (a, b) in diffs.items())
        raise ValueError(
            f"The glimpse checkpoint in {directory} was trained on a different base model ({detail}). Load it onto "
            "the base model it was trained with."
        )
    try:
        module = glimpse_module(model)
    except ValueError:
        add_glimpse(base, config)
        module = glimpse_module(model)
    state = load_file(str(Path(directory) / WEIGHTS_NAME))
    reference = next(module.parameters())
    try:
        module.load_state_dict({k: v.to(reference.device, reference.dtype) for k, v in state.items()}, strict=True)
    except RuntimeError as err:  # missing / unexpected tensors or shapes that disagree with its own config
        message = " ".join(line.strip() for line in str(err).splitlines())
        raise ValueError(
            f"{Path(directory) / WEIGHTS_NAME} does not match {CONFIG_NAME} beside it (weights saved by another "
            f"version of the glimpse need retraining): {message}"
        ) from None
    module.config = config
    return model
