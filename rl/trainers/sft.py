"""Stage sft: supervised fine-tuning of the VLM itself on TRL's SFTTrainer.

The same VQA rows as the other stages, batched by `GlimpseCollator` (left-padded prompt, answer, labels only on the
answer and its end-of-turn token). No glimpse is attached: this adapts (or, for the built-in mini model, teaches) the
base model that stage 1 later prunes. Overridden hook: `compute_loss`, only to hand the model its own inputs (the
collator's box and size fields are for stage 1); checkpoints carry the completion marker (`CompleteCheckpointMixin`).
"""

from __future__ import annotations

from trl import SFTTrainer

from ..config.stages import VLMSFTConfig
from ..data.collate import GlimpseCollator, model_inputs
from .checkpoint import CompleteCheckpointMixin
from .tuning import FROM_ARGS, tuning


class VLMSFTTrainer(CompleteCheckpointMixin, SFTTrainer):
    def __init__(
        self, model, args: VLMSFTConfig, train_dataset, processing_class, peft_config=FROM_ARGS, callbacks=None
    ):
        collator = GlimpseCollator(processing_class, args.max_answer_tokens)
        extra = {"peft_config": tuning(args, model, peft_config), "callbacks": callbacks, "data_collator": collator}
        super().__init__(
            model=model, args=args, train_dataset=train_dataset, processing_class=processing_class, **extra
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = {**model_inputs(inputs), "labels": inputs["labels"]}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
