"""Checkpoint hooks shared by glimpserl's trainers: glimpse weights in every save, and a completion marker.

A checkpoint-N folder counts as complete only while it holds the marker, which is written after everything else:
- the marker of a folder about to be (re)written is removed first, so a re-save killed midway is never trusted;
- rotation (`save_total_limit`) runs after the new marker and never deletes the checkpoint just completed, so a kill
  at any point leaves the newest complete checkpoint in place;
- checkpoints later than the step a run starts from belong to an earlier run: they lose their marker at the start,
  so `last` never mixes two runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from ...models import glimpse_module, load_glimpse, save_glimpse

COMPLETE_MARKER = "glimpserl_checkpoint_complete"
PREFIX = "checkpoint-"
logger = logging.getLogger("glimpserl")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a checkpoint-N folder name, else None."""
    name = Path(path).name
    return int(name[len(PREFIX) :]) if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit() else None


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint-N folder in `output_dir`, complete or not, oldest step first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def is_complete(folder: str | os.PathLike) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint-N folder whose save finished (has the marker); interrupted ones are ignored."""
    done = [p for p in checkpoint_folders(output_dir) if is_complete(p)]
    return str(done[-1]) if done else None


def mark_complete(folder: Path, step: int) -> None:
    tmp = folder / f".{COMPLETE_MARKER}.tmp"
    tmp.write_text(f"{step}\n")
    os.replace(tmp, folder / COMPLETE_MARKER)  # atomic: the marker is either absent or whole


def mark_incomplete(folder: Path) -> None:
    (folder / COMPLETE_MARKER).unlink(missing_ok=True)


def resume_checkpoint(output_dir: str | os.PathLike, value) -> str | None:
    """What `resume_from_checkpoint` names: None (start at step 0), a checkpoint folder, or `last` / `true`: the
    newest complete checkpoint in output_dir. Raises rather than silently restarting when checkpoints exist but
    none is complete, or when the named checkpoint is incomplete."""
    if value is None or value is False or str(value).lower() in ("", "false", "none"):
        return None
    if value is True or str(value).lower() in ("last", "true"):
        found = last_complete_checkpoint(output_dir)
        if found is not None:
            return found
        stale = [p.name for p in checkpoint_folders(output_dir)]
        if stale:
            raise ValueError(
                f"--resume_from_checkpoint last: {output_dir} holds {', '.join(stale)} but none is complete (no "
                f"{COMPLETE_MARKER}: each save was interrupted), so there is nothing to resume from. Delete those "
                "folders to start from step 0, or resume from a complete checkpoint elsewhere."
            )
        logger.info("No checkpoint in %s yet: starting from step 0.", output_dir)
        return None
    folder = Path(value)
    if not folder.is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint {value} does not exist (or is not a folder).")
    if not is_complete(folder):
        raise ValueError(
            f"resume_from_checkpoint {value} is incomplete (no {COMPLETE_MARKER}: its save was interrupted or it "
            "was being rewritten); resume from `last` or from an earlier checkpoint-N."
        )
    return str(folder)


def rotate_checkpoints(output_dir: str | os.PathLike, limit: int | None, keep: set[Path]) -> None:
    """Keep at most `limit` checkpoint folders: incomplete ones go first, then the oldest complete ones; the folders
    in `keep` (the checkpoint just completed, the best one) never go. A folder loses its marker before its files."""
    folders = checkpoint_folders(output_dir)
    if not limit or limit <= 0 or len(folders) <= limit:
        return
    keep = {p.resolve() for p in keep}
    excess = len(folders) - max(limit, len(keep))
    for folder in sorted(folders, key=is_complete):  # stable: oldest first within each group
        if excess <= 0:
            break
        if folder.resolve() not in keep:
            mark_incomplete(folder)
            shutil.rmtree(folder, ignore_errors=True)
            excess -= 1


def retire_later_checkpoints(output_dir: str | os.PathLike, start_step: int) -> None:
    """Checkpoints after the step a run starts from are an earlier run's: they stop counting as complete."""
    later = [p for p in checkpoint_folders(output_dir) if checkpoint_step(p) > start_step and is_complete(p)]
    for folder in later:
        mark_incomplete(folder)
    if later:
        logger.warning(
            "%s: %s are later than this run's first step (%d) and belong to an earlier run; they no longer count as "
            "complete checkpoints and are overwritten or rotated away as training passes them.",
            output_dir,
            ", ".join(p.name for p in later),
            start_step,
        )


def _holds_full_weights(folder: str | os.PathLike) -> bool:
    names = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    return any((Path(folder) / name).is_file() for name in names)


def load_full_weights(model, folder: str | os.PathLike) -> None:
    """Load a checkpoint's full model weights onto `model` in place, through the model class's own loader.

    transformers' resume hands the saved tensors to `load_state_dict(strict=False)` under their saved names, which
    save_pretrained writes in the checkpoint (legacy) layout, e.g. `model.layers.*` for Qwen2.5-VL's
    `model.language_model.layers.*`: nothing matches, nothing loads, and training silently goes on from the initial
    weights. `from_pretrained` maps the names; a key still unmatched (other than the glimpse's, saved on its own) is
    an error.
    """
    saved = type(model).from_pretrained(str(folder), dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(saved.state_dict(), strict=False)
    missing = [key for key in missing if ".glimpse." not in f".{key}"]
    if missing or unexpected:
        raise ValueError(
            f"Cannot resume from {folder}: its weights do not fit this model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); resume with the model the run was started with."
        )


class CompleteCheckpointMixin:
    """For a transformers Trainer: checkpoints count as complete only with the marker (see the module docstring),
    `last` means the newest complete one, and a run resumed from its last step does not train past it."""

    def train(self, resume_from_checkpoint=None, **kwargs):
        # `True` / "last": the newest COMPLETE checkpoint (transformers' own choice ignores the markers); a folder
        # must be complete.
        resume_from_checkpoint = resume_checkpoint(self.args.output_dir, resume_from_checkpoint)
        if self.args.should_save:
            start = checkpoint_step(resume_from_checkpoint) if resume_from_checkpoint else 0
            retire_later_checkpoints(self.args.output_dir, start or 0)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs):
        epochs, steps = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, *args, **kwargs
        )
        if self.state.global_step >= max_steps:
            # Resumed from the last step (e.g. killed during the final save): transformers would run one step more
            # when that step is mid-epoch, so the loop is skipped instead.
            return num_train_epochs, 0
        return epochs, steps

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        target = self.accelerator.unwrap_model(model or self.model)
        if hasattr(target, "peft_config") or not _holds_full_weights(resume_from_checkpoint):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_full_weights(target, resume_from_checkpoint)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"{PREFIX}{self.state.global_step}"
        if self.args.should_save:
            mark_incomplete(folder)  # a re-save over an existing checkpoint: not complete until it is again
        self.accelerator.wait_for_everyone()
        # transformers rotates before this method could write the marker; rotation runs below instead.
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_complete(folder, self.state.global_step)
            best = self.state.best_model_checkpoint
            rotate_checkpoints(run_dir, limit, {folder, *([Path(best)] if best else [])})


class GlimpseCheckpointMixin(CompleteCheckpointMixin):
    """For a transformers Trainer whose model carries a glimpse: complete checkpoints that hold the glimpse too.

    `save_glimpse_only = True` (stage 1): a save holds the glimpse weights and the processor, not the frozen base.
    Otherwise (stage 2) the trainer's own save (LoRA adapter or full weights) runs first and the glimpse is added.
    """

    save_glimpse_only = False

    def _gathered_glimpse(self):
        params = list(glimpse_module(self.model).parameters())
        if self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
        return contextlib.nullcontext()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.save_glimpse_only:
            super().save_model(output_dir, _internal_call=_internal_call)
        with self._gathered_glimpse():
            if self.args.should_save:
                save_glimpse(self.accelerator.unwrap_model(self.model), output_dir)
                if self.save_glimpse_only:
                    self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self.save_glimpse_only:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_glimpse(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)
