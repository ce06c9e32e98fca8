"""Checkpoint hooks shared by glimpserl's trainers: glimpse weights in every save, and a completion marker."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..models import glimpse_module, load_glimpse, save_glimpse

COMPLETE_MARKER = "glimpserl_checkpoint_complete"


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint-N folder whose save finished (has the marker); interrupted ones are ignored."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).is_file() and p.name[11:].isdigit()]
    return str(max(done, key=lambda p: int(p.name[11:]))) if done else None


class GlimpseCheckpointMixin:
    """For a transformers Trainer whose model carries a glimpse.

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

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            (folder / COMPLETE_MARKER).write_text(f"{self.state.global_step}\n")
