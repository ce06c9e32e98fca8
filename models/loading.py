"""Load a base VLM and its processor by name: a local folder, a hub id, or a built-in tiny model."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import tiny
from .adapter import adapter_for_type, load_families, processor_adapter, supported_model_types

# Family folders register their adapters (and any processor class AutoProcessor must know) before anything loads.
load_families()

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {f"{BUILTIN_PREFIX}tiny-{model_type}": model_type for model_type in supported_model_types()}
"""Random tiny models, one per supported model type, built in-process on first use (weights from a seed)."""
ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_MODELS = {
    "builtin:mini-qwen2_5_vl": ASSETS / "mini-qwen2_5_vl",  # the shapes task (the image picks the object)
    "builtin:mini-qwen3_vl": ASSETS / "mini-qwen3_vl",  # the places task (the question picks it)
}
"""Trained checkpoints that ship with the package (see each folder's card.json: recipe, seed, held-out accuracy)."""
PROCESSOR_MARKERS = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")
"""A folder holds a processor when it holds one of these (the files `processor.save_pretrained` writes first)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def cache_dir() -> Path:
    """Where glimpserl keeps generated artefacts (built-in models and data): $GLIMPSERL_CACHE or ~/.cache/glimpserl."""
    return Path(os.environ.get("GLIMPSERL_CACHE", Path.home() / ".cache" / "glimpserl"))


def builtin_model_path(name: str, seed: int = 0) -> Path:
    """Write a built-in tiny model (weights + processor) to the cache once and return its folder.

    Written to a temporary folder and renamed, so concurrent ranks and interrupted runs never see half a model.
    """
    from accelerate import PartialState

    family = _builtin_family(name)
    folder = cache_dir() / f"tiny-{family}-seed{seed}"
    # save_pretrained writes from the main process only: let it go first, the other ranks then find the folder.
    with PartialState().main_process_first():
        if not (folder / "config.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
            with _outside_zero3():
                tiny.save_tiny(tmp, family=family, seed=seed)
            try:
                tmp.rename(folder)
            except OSError:  # another job sharing the cache finished first; its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _outside_zero3():
    """Build a model as plain tensors even while a ZeRO-3 run is live (its config would partition the weights at
    construction, which a from-config build cannot initialise); it is then loaded through from_pretrained."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def is_builtin(name: str) -> bool:
    return name.startswith(BUILTIN_PREFIX)


def check_model_name(name: str, files: tuple[str, ...] = ("config.json",)) -> None:
    """Fail in a second, before anything loads, when `name` cannot name a model: a path that does not exist or is
    a folder without any of `files`, or a hub id while the hub is offline and not cached."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"The model name is empty ({name!r}): give a model folder, a hub id or a builtin: name.")
    if is_builtin(name):
        return  # the loaders know the built-in names and refuse an unknown one before building anything
    path = Path(name).expanduser()
    if path.exists():
        if not any((path / file).is_file() for file in files):
            raise ValueError(
                f"Model {name!r} is not a model folder (no {' or '.join(files)} in it): point at a folder written "
                "by save_pretrained, or at a run's export."
            )
        return
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        raise FileNotFoundError(
            f"Model path {name!r} does not exist (relative paths start at {Path.cwd()}): give an existing model "
            f"folder, a hub id such as llava-hf/llava-1.5-7b-hf, or one of {sorted(BUILTIN_MODELS)}."
        )
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, files[0]), str):
        raise ValueError(
            f"Model {name!r} is neither a local folder nor in the hub cache, and the hub is offline (HF_HUB_OFFLINE "
            "is set): give the path of a model folder, or unset HF_HUB_OFFLINE to download it."
        )


def load_processor(name: str, min_pixels: int | None = None, max_pixels: int | None = None):
    """The processor for `name`; min/max_pixels bound the number of visual tokens per image."""
    from transformers import AutoProcessor

    check_model_name(name, PROCESSOR_MARKERS)
    if is_builtin(name) and name not in SHIPPED_MODELS:
        processor = tiny.build_tiny_processor(_builtin_family(name))
    else:
        processor = AutoProcessor.from_pretrained(shipped_path(name) if name in SHIPPED_MODELS else name)
    if min_pixels is not None or max_pixels is not None:
        processor_adapter(processor).set_pixel_bounds(processor, min_pixels, max_pixels)
    return processor


def load_model(name: str, dtype: str = "float32", attn_implementation: str | None = None, seed: int = 0):
    """The base model for `name` (no glimpse attached yet), in eval mode."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    check_model_name(name)
    if name in SHIPPED_MODELS:
        name = str(shipped_path(name))
        attn_implementation = attn_implementation or "sdpa"
    elif is_builtin(name):
        # Through from_pretrained like any checkpoint, so ZeRO-3 partitioning and dtype handling are the real ones.
        name = str(builtin_model_path(name, seed))
        attn_implementation = attn_implementation or "sdpa"
    from transformers import AutoModelForImageTextToText

    kwargs = {"dtype": DTYPES[dtype]}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForImageTextToText.from_pretrained(name, **kwargs).eval()


def model_type_of(name: str) -> str | None:
    """The model type `name` loads as, read without loading it (a built-in name, or a folder's config.json, or a
    LoRA folder's base); None when that needs the hub."""
    import json

    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    path = SHIPPED_MODELS[name] if name in SHIPPED_MODELS else Path(name).expanduser()
    for config, key in (("config.json", "model_type"), ("adapter_config.json", "base_model_name_or_path")):
        if (path / config).is_file():
            value = json.loads((path / config).read_text()).get(key)
            return value if key == "model_type" or not value else model_type_of(value)
    return None


def family_of(name: str):
    """The adapter of the family `name` loads as, or None when that is unknown without loading it."""
    model_type = model_type_of(name)
    return adapter_for_type(model_type) if model_type in supported_model_types() else None


__all__ = [
    "builtin_model_path",
    "family_of",
    "model_type_of",
    "cache_dir",
    "check_model_name",
    "is_builtin",
    "load_model",
    "load_processor",
    "shipped_path",
]


def shipped_path(name: str) -> Path:
    """Folder of a trained checkpoint that ships with the package."""
    folder = SHIPPED_MODELS[name]
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"The package's copy of {name} is missing ({folder}); reinstall glimpserl.")
    return folder


def _builtin_family(name: str) -> str:
    if name not in BUILTIN_MODELS:
        valid = sorted([*BUILTIN_MODELS, *SHIPPED_MODELS])
        raise ValueError(f"Unknown built-in model {name!r}; built-in models: {valid}.")
    return BUILTIN_MODELS[name]
