"""What trains in a stage that tunes the VLM (sft, grpo): the LoRA config of `LoraArguments`, or full tuning with the
vision encoder frozen when asked. The stage mains build it and hand it to the trainer (as TRL's scripts do)."""

from __future__ import annotations

from ...models import freeze_vision, get_adapter

FROM_ARGS = "from_args"
"""A trainer's `peft_config` default: build it from the trainer's args (for callers that construct the trainer
directly, e.g. tests); the stage mains pass the one they built."""


def lora_config(args, model):
    """The PEFT LoraConfig for `model`'s family (its language-model linears), or None under full tuning."""
    if not args.use_lora:
        return None
    from peft import LoraConfig

    target = get_adapter(model).lora_target_modules()
    return LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, target_modules=target)


def tuning(args, model, peft_config=FROM_ARGS):
    """The peft config to hand TRL (built from `args` unless given); full tuning freezes the vision encoder first
    when `args.freeze_vision`."""
    if peft_config == FROM_ARGS:
        peft_config = lora_config(args, model)
    if peft_config is None and args.freeze_vision:
        freeze_vision(model)
    return peft_config
