"""Stage sft: supervised fine-tuning of the VLM itself on TRL's SFTTrainer.

The same VQA rows as the other stages, batched by `GlimpseCollator` (left-padded prompt, answer, labels only on the
answer and its end-of-turn token). No glimpse is attached: this adapts (or, for the built-in mini model, teaches) the
base model that stage 1 later prunes. Overridden hook: `compute_loss`, only to hand the model its own inputs (the
collator's box and size fields are for stage 1); checkpoints carry the completion marker (`CompleteCheckpointMixin`).
"""

from __future__ import annotations

from trl import SFTTrainer

from ..models import freeze_vision
from .checkpoint import CompleteCheckpointMixin
from .collate import GlimpseCollator, model_inputs
from .configs import VLMSFTConfig


class VLMSFTTrainer(CompleteCheckpointMixin, SFTTrainer):
    def __init__(self, model, args: VLMSFTConfig, train_dataset, processing_class, callbacks=None):
        peft_config = args.peft_config(model)
        if peft_config is None and args.freeze_vision:
            freeze_vision(model)
        super().__init__(
            model=model,
            args=args,
            data_collator=GlimpseCollator(processing_class, args.max_answer_tokens),
            train_dataset=train_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            callbacks=callbacks,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**model_inputs(inputs), "labels": inputs["labels"]}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
