"""The trainers: TRL subclasses that override narrow hooks (`sft`, `vip` with its `losses`, `grpo` with its
`rollouts`), the checkpoint hooks they share (`checkpoint`) and what a tuning stage trains (`tuning`)."""

from .. import lazy_exports

EXPORTS = {
    ".sft": "VLMSFTTrainer",
    ".vip": "VIPTrainer",
    ".grpo": "GlimpseGRPOTrainer",
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
