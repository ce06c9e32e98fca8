"""Turn a stage-2 run folder into a clean folder for inference, and load either export form back.

A run folder (or one of its checkpoint-N folders) holds a LoRA adapter or full model weights, the glimpse weights
and the processor. `export_run` writes one of two forms:

- adapter (default): the LoRA adapter + glimpse + processor, with the base model named in `adapter_config.json`;
- merged (`merge=True`): the base with the adapter merged in, saved as a standard checkpoint that
  `AutoModelForImageTextToText.from_pretrained` loads, + glimpse + processor.

A full-fine-tuning run exports as a standard checkpoint + glimpse either way. Every export also holds
`glimpserl_export.json` (form, base model, source), written last.

    glimpserl export outputs/grpo/checkpoint-500 --out exports/grpo-500 [--merge] [--base MODEL]
    model, processor = load_exported("exports/grpo-500")   # glimpse attached, eval mode
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from safetensors import SafetensorError, safe_open

from ...models import check_glimpse_checkpoint, load_glimpse, read_glimpse_config, save_glimpse
from ...models.glimpse import CONFIG_NAME as GLIMPSE_CONFIG
from ...models.glimpse import WEIGHTS_NAME as GLIMPSE_WEIGHTS
from ...models.loading import PROCESSOR_MARKERS, load_model, load_processor
from .card import RUN_CARD, find_run_card

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")

MANIFEST = "glimpserl_export.json"
# Every file `processor.save_pretrained` may write; copied verbatim, so exporting never needs the processor's classes.
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-[0-9a-f]{8}$")
"""Hidden folders beside an export while it is written (`partial`) or replaced (`old`)."""


@dataclass(frozen=True)
class RunFolder:
    """A validated run folder (or export): where it is, which weights it holds, and its base model if LoRA."""

    path: Path
    kind: Literal["adapter", "full"]
    base: str | None

    @property
    def has_processor(self) -> bool:
        return any((self.path / name).is_file() for name in PROCESSOR_MARKERS)


def inspect_run(path: str | os.PathLike, base: str | None = None) -> RunFolder:
    """Check that `path` holds glimpse weights and either a LoRA adapter or full weights; say what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Run folder {folder} does not exist (or is not a folder).")
    staging = STAGING.match(folder.name)
    if staging:
        raise ValueError(
            f"{folder} is an unfinished export (a staging folder that an interrupted `glimpserl export` left "
            f"behind), not a run. Export again to {folder.parent / staging['name']}; that also removes it."
        )
    missing = [name for name in (GLIMPSE_WEIGHTS, GLIMPSE_CONFIG) if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} has no glimpse weights ({' and '.join(missing)} missing; save_glimpse writes both). Point at "
            "a stage-2 run folder or one of its checkpoint-N folders."
        )
    check_glimpse_checkpoint(folder)  # a damaged glimpse fails here, before any model loads
    has_adapter = (folder / ADAPTER_CONFIG).is_file()
    has_full = (folder / MODEL_CONFIG).is_file() and any((folder / name).is_file() for name in FULL_WEIGHTS)
    if has_adapter and has_full:
        raise ValueError(f"{folder} holds both a LoRA adapter and full model weights; export one of them per folder.")
    if has_adapter:
        if not (folder / ADAPTER_WEIGHTS).is_file():
            raise FileNotFoundError(f"{folder} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS} (safetensors only).")
        return RunFolder(folder, "adapter", base or _adapter_base(folder))
    if has_full:
        if base is not None:
            raise ValueError(f"{folder} holds full model weights, which need no base model: drop --base.")
        return RunFolder(folder, "full", None)
    raise FileNotFoundError(
        f"{folder} has neither a LoRA adapter ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}) nor full model weights "
        f"({MODEL_CONFIG} + {FULL_WEIGHTS[0]})."
    )


def _adapter_base(folder: Path) -> str:
    base = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{folder / ADAPTER_CONFIG} names no base model (base_model_name_or_path is empty): pass --base "
            "(a folder, hub id or builtin:... name)."
        )
    return base


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    merge: bool = False,
    base: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Export `run_dir` to `out_dir` (see the module docstring) and return `out_dir`.

    `base` overrides the adapter config's base model. `dtype` ("float32", "bfloat16", "float16") is the dtype of a saved
    checkpoint (merged or full; default: as stored); an adapter export copies the adapter as trained. Everything
    is written to a hidden folder beside `out_dir` and renamed into place, so `out_dir` is either complete or absent.
    """
    run = inspect_run(run_dir, base)
    out = Path(out_dir)
    clear_leftovers(out)
    _check_out_dir(out, run.path, overwrite)
    if dtype is not None and run.kind == "adapter" and not merge:
        raise ValueError("--dtype applies to merged and full-weight exports; an adapter export copies the adapter.")
    form = "full" if run.kind == "full" else ("merged" if merge else "adapter")
    with staged_publish(out) as tmp:
        if form == "adapter":
            _copy_adapter(run, tmp, base)
            _copy_glimpse(run.path, tmp)
        else:
            model = _load_weights(run, dtype or "auto", merge=True)
            model.save_pretrained(tmp)
            save_glimpse(model, tmp)
            _check_standard_checkpoint(tmp)
        _copy_processor(run, tmp)
        manifest = {"format": form, "base_model": run.base, "source": str(run.path.resolve())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def load_exported(
    path: str | os.PathLike,
    base: str | None = None,
    dtype: str = "float32",
    merge: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """(model with its glimpse, processor) from an export of either form, or straight from a run folder.

    An adapter folder loads its base (`base` or the adapter config's) and returns a `PeftModel`, or the merged
    model with `merge=True`. The processor comes from the folder, else from the base model; min/max_pixels override
    its image-size bounds.
    """
    run = inspect_run(path, base)
    model = _load_weights(run, dtype, merge)
    if run.has_processor:
        processor = load_processor(str(run.path), min_pixels, max_pixels)
    elif run.base is not None:
        processor = load_processor(run.base, min_pixels, max_pixels)
    else:
        raise FileNotFoundError(f"{run.path} has no processor files and no base model to take them from.")
    return model.eval(), processor


def _load_weights(run: RunFolder, dtype: str, merge: bool):
    if run.kind == "full":
        return load_glimpse(load_model(str(run.path), dtype=dtype), run.path)
    from peft import PeftModel

    # The glimpse goes on before the adapter so that the adapter wraps the same module tree it was trained on.
    try:
        base = load_model(run.base, dtype=dtype)
    except (OSError, ValueError) as err:  # a training machine's path or an unreachable hub id
        raise FileNotFoundError(
            f"Cannot load the base model {run.base!r} of {run.path} ({err}); pass --base."
        ) from err
    model = load_glimpse(base, run.path)
    model = PeftModel.from_pretrained(model, str(run.path))
    return model.merge_and_unload(safe_merge=True) if merge else model


def _check_out_dir(out: Path, run: Path, overwrite: bool) -> None:
    if run.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"--out {out} would replace the run folder {run}; export to a new folder.")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it.")


def clear_leftovers(out: Path) -> None:
    """Remove what an export to `out` killed midway left: its staging folder, and the previous export it was
    replacing (put back in place when the kill came between the two renames)."""
    for leftover in sorted(out.parent.glob(f".{out.name}.*-*")):
        match = STAGING.match(leftover.name)
        if not match or match["name"] != out.name:
            continue
        if match["kind"] == "old" and not out.exists():
            leftover.rename(out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def staged_publish(out: Path):
    """Yield a fresh hidden folder beside `out`; on success it replaces `out`, on failure it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()  # not mkdtemp: its 0700 mode would stick to the published folder
    old = None
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out.exists():
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _safetensor_keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err


def _copy_adapter(run: RunFolder, tmp: Path, base: str | None) -> None:
    if not any("lora_" in key for key in _safetensor_keys(run.path / ADAPTER_WEIGHTS)):
        raise ValueError(f"{run.path / ADAPTER_WEIGHTS} holds no LoRA weights (no lora_ keys).")
    config = json.loads((run.path / ADAPTER_CONFIG).read_text())
    if base is not None:  # the export names the base it was checked against, so it describes itself
        config["base_model_name_or_path"] = base
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    shutil.copy2(run.path / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)


def _copy_glimpse(src: Path, tmp: Path) -> None:
    read_glimpse_config(src)
    if not _safetensor_keys(src / GLIMPSE_WEIGHTS):
        raise ValueError(f"{src / GLIMPSE_WEIGHTS} holds no tensors.")
    shutil.copy2(src / GLIMPSE_WEIGHTS, tmp / GLIMPSE_WEIGHTS)
    shutil.copy2(src / GLIMPSE_CONFIG, tmp / GLIMPSE_CONFIG)
    card = find_run_card(src)  # the run's prompt settings travel with its export (glimpserl eval follows them)
    if card is not None:
        shutil.copy2(card, tmp / RUN_CARD)


def _copy_processor(run: RunFolder, tmp: Path) -> None:
    if run.has_processor:
        for name in PROCESSOR_FILES:
            if (run.path / name).is_file():
                shutil.copy2(run.path / name, tmp / name)
        if (run.path / "additional_chat_templates").is_dir():
            shutil.copytree(run.path / "additional_chat_templates", tmp / "additional_chat_templates")
    elif run.base is not None:
        load_processor(run.base).save_pretrained(tmp)
    else:
        raise FileNotFoundError(f"{run.path} has no processor files ({' / '.join(PROCESSOR_MARKERS)}).")


def _check_standard_checkpoint(folder: Path) -> None:
    """A saved merged/full checkpoint must be plain base-architecture weights: no LoRA, no glimpse tensors."""
    for path in folder.glob("*.safetensors"):
        if path.name == GLIMPSE_WEIGHTS:
            continue
        stray = [key for key in _safetensor_keys(path) if "lora_" in key or ".glimpse." in f".{key}"]
        if stray:
            raise RuntimeError(f"The saved checkpoint {path} still holds LoRA or glimpse tensors, e.g. {stray[:3]}.")
