"""The stage configs: dataclasses parsed from a recipe YAML plus `--key value` overrides (TrlParser style).

Each setting is declared once: TRL's fields keep TRL's declaration unless `RunDefaults` (every stage) or
`ScheduleDefaults` (the supervised stages) re-declare them with glimpserl's default; the other knobs live in one
mixin each (`ModelArguments`, `HeldOutArguments`, `AnswerArguments`, `LoraArguments`, the data's `DataConfig`, the
built-in sets' `SynthArguments`) and a stage config inherits the ones it uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trl import GRPOConfig, SFTConfig

from ...rewards.registry import parse_spec
from ..data.synth.builtin import SynthArguments
from .glimpse import GlimpseArguments
from .names import DEFAULT_MODEL, DtypeArguments


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


@dataclass
class ModelArguments(DtypeArguments, GlimpseArguments):
    """The base VLM and the glimpse attached to it (the glimpse keys come from GlimpseConfig's fields)."""

    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Base VLM: a local folder, a hub id, builtin:mini-qwen2_5_vl (a small Qwen2.5-VL trained on the "
            "built-in shapes task, shipped with the package) or builtin:tiny-qwen2_5_vl / builtin:tiny-qwen2_vl / "
            "builtin:tiny-llava (random weights)."
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: sdpa, eager or flash_attention_2. Stage 1 trains in masked mode, which "
            "needs sdpa or eager (a 4D mask)."
        },
    )
    glimpse_init: str | None = field(
        default=None, metadata={"help": "Folder with glimpse weights to start from (else a fresh glimpse + VIP)."}
    )
    seed_model: int = field(default=0, metadata={"help": "Seed of a built-in tiny model's random weights."})


@dataclass
class HeldOutArguments:
    """Held-out data evaluated after training."""

    eval_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Held-out data evaluated after training (same formats as `dataset`; builtin:synth / "
            "builtin:shapes = the built-in set's test split)."
        },
    )
    eval_split: str = field(default="train", metadata={"help": "Split of eval_dataset to read."})
    eval_max_samples: int | None = field(default=None, metadata={"help": "Evaluate on at most this many rows."})


@dataclass
class AnswerArguments:
    max_answer_tokens: int = field(default=32, metadata={"help": "Answers are truncated to this many tokens."})


@dataclass
class LoraArguments:
    """LoRA on the language model's linears, or full tuning."""

    use_lora: bool = field(default=True, metadata={"help": "LoRA on the language-model linears; else full tuning."})
    lora_r: int = field(default=32, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    freeze_vision: bool = field(default=True, metadata={"help": "Full tuning: keep the vision encoder frozen."})


@dataclass
class RunDefaults:
    """TRL / transformers defaults that do not fit glimpserl's runs, re-declared once for every stage: CPU-safe
    precision and memory (GPU recipes turn bf16 and checkpointing on), the data columns the collator, losses and
    rewards read, and the cadence of small runs. A CPU-only machine running multi-process (DeepSpeed on gloo) needs
    use_cpu to see the right world size."""

    bf16: bool = field(default=False, metadata={"help": "bfloat16 mixed precision (GPU recipes turn it on)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations to save memory."})
    report_to: str = field(default="none", metadata={"help": "none, wandb or tensorboard."})
    save_strategy: str = field(default="steps", metadata={"help": "When to checkpoint (steps, epoch, no)."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Keep the answer / boxes columns: the collator, the stage-1 losses and the rewards read them."
        },
    )
    learning_rate: float = field(
        default=1e-4, metadata={"help": "AdamW learning rate (the reference recipes' for the glimpse stages)."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=50, metadata={"help": "Checkpoint every N steps."})

    def __post_init__(self):
        self.use_cpu = self.use_cpu or not _has_accelerator()
        super().__post_init__()


@dataclass
class ScheduleDefaults:
    """The supervised stages' schedule (the reference stage-1 recipe: cosine, 10% warm-up, one epoch)."""

    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Linear warm-up: a step count, or a fraction of all steps when < 1."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training data."})


@dataclass
class VIPTrainingConfig(AnswerArguments, HeldOutArguments, SynthArguments, ScheduleDefaults, RunDefaults, SFTConfig):
    """Stage 1 (VIP distillation): TRL's SFTConfig plus the loss terms. Defaults follow the reference recipe
    (AdamW lr 1e-4 on the glimpse + VIP only, cosine, 10% warm-up, 1 epoch)."""

    kl_weight: float = field(default=1.0, metadata={"help": "Weight of KL(unpruned teacher || pruned student)."})
    teacher_forward: Literal["shared", "separate"] = field(
        default="shared",
        metadata={
            "help": "How the unpruned teacher runs. shared: inside the student's forward, reusing its vision encoder "
            "call and prompt layers 0..K (pruning changes neither), without gradient; separate: a second, vanilla "
            "forward of the whole model (the same logits up to float rounding, at the cost of a full forward)."
        },
    )
    sparsity: Literal["target", "batch_target", "penalty"] = field(
        default="target",
        metadata={
            "help": "target: (each sample's mean keep prob - target_keep_ratio)^2, the same budget for every sample; "
            "batch_target: (the batch's mean keep prob - target_keep_ratio)^2, a budget shared by the batch, so a "
            "question that needs more of the image may keep more than one that needs less; penalty: mean keep prob."
        },
    )
    target_keep_ratio: float = field(default=0.2, metadata={"help": "Keep ratio the target sparsity pulls to."})
    sparsity_weight: float = field(default=1.0, metadata={"help": "Weight of the sparsity term."})
    box_weight: float = field(
        default=0.0, metadata={"help": "Weight of the box loss (Dice + BCE on token cells under `boxes`); 0 = off."}
    )
    box_dice_weight: float = field(default=1.0, metadata={"help": "Dice share of the box loss."})
    box_bce_weight: float = field(default=0.1, metadata={"help": "BCE share of the box loss."})
    box_pos_weight: float = field(
        default=1.0, metadata={"help": "BCE weight of box cells vs other cells (> 1 favours recall)."}
    )
    box_focal_gamma: float = field(
        default=0.0,
        metadata={
            "help": "Focal exponent of the box BCE: each cell's term times (1 - p_true)^gamma, so cells the VIP already "
            "scores right weigh little and hard ones (a faint object's cells) dominate; 0 = plain BCE."
        },
    )
    lm_weight: float = field(default=0.0, metadata={"help": "Weight of the pruned student's answer cross-entropy."})
    relaxation: Literal["straight_through", "straight_through_bias", "gumbel", "sigmoid"] = field(
        default="straight_through",
        metadata={
            "help": "Differentiable keep mask. straight_through: hard sampled mask forward, gradient through the "
            "multiplicative mask (dropped tokens learn too); straight_through_bias: the same forward, gradient through "
            "the additive bias (dropped tokens get none); gumbel: soft sample; sigmoid: soft, no noise."
        },
    )
    relaxation_temperature: float = field(default=1.0, metadata={"help": "Temperature of the relaxation."})
    deploy_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Keep threshold stored with the final glimpse weights and used by the held-out evaluation "
            "(default: glimpse_threshold, the cut training used). Or let deploy_keep_ratio pick it."
        },
    )
    deploy_keep_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Pick the deployment threshold on the validation split (calibration_dataset, or a built-in "
            "set's val split): the threshold whose mean keep ratio there is closest to this value. Overrides "
            "deploy_threshold."
        },
    )
    calibration_dataset: str | None = field(
        default=None,
        metadata={"help": "Validation data for deploy_keep_ratio (same formats as `dataset`; never the test split)."},
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("kl_weight", "sparsity_weight", "box_weight", "lm_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not 0.0 < self.target_keep_ratio <= 1.0:
            raise ValueError(f"target_keep_ratio must be in (0, 1], got {self.target_keep_ratio}.")
        if self.deploy_threshold is not None and not 0.0 <= self.deploy_threshold < 1.0:
            raise ValueError(f"deploy_threshold must be in [0, 1), got {self.deploy_threshold}.")
        if self.deploy_keep_ratio is not None and not 0.0 < self.deploy_keep_ratio <= 1.0:
            raise ValueError(f"deploy_keep_ratio must be in (0, 1], got {self.deploy_keep_ratio}.")
        if self.relaxation_temperature <= 0:
            raise ValueError(f"relaxation_temperature must be > 0, got {self.relaxation_temperature}.")


@dataclass
class GlimpseGRPOConfig(LoraArguments, HeldOutArguments, SynthArguments, RunDefaults, GRPOConfig):
    """Stage 2 (GlimpsePrune+): TRL's GRPOConfig plus the keep-mask policy and the rewards. `reward_weights` comes
    from the reward specs (their `weight`), so it is not a key of its own."""

    mask_policy: Literal["deterministic", "sample"] = field(
        default="sample",
        metadata={
            "help": "deterministic: the VIP's thresholded mask, VIP frozen. sample: each rollout samples its own mask "
            "from the VIP probabilities (so a prune-ratio reward varies inside a GRPO group) and the VIP learns by "
            "the policy gradient of the mask's log-probability with the same advantages."
        },
    )
    vip_pg_weight: float = field(default=1.0, metadata={"help": "Weight of the VIP's policy-gradient loss."})
    # Typed list[str] for the command line (`--rewards exact_match prune_ratio`); a recipe may also give mappings
    # {name, weight, **params}, which the reward registry validates.
    rewards: list[str] = field(
        default_factory=lambda: ["exact_match"],
        metadata={
            "help": "Reward specs: names, or in a recipe {name, weight, **params} mappings; see "
            "glimpserl.rewards.available_rewards(). Their weights become TRL's reward_weights."
        },
    )
    mask_seed: int = field(default=0, metadata={"help": "Seed of the rollout masks' sampling noise (per rank)."})

    reward_weights: list[float] | None = field(
        default=None,
        metadata={"help": "Taken from the reward specs' `weight` (see `rewards`); leave unset."},
    )

    # Defaults of the reference GlimpsePrune+ recipe.
    beta: float = field(default=0.04, metadata={"help": "k3 KL coefficient to the reference model."})
    num_generations: int | None = field(default=4, metadata={"help": "Completions per prompt (GRPO group)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of rollouts."})
    max_completion_length: int | None = field(default=128, metadata={"help": "New tokens per completion."})

    def __post_init__(self):
        if self.use_vllm:
            raise ValueError("use_vllm is not supported: rollouts must run glimpserl's pruned forward (HF generate).")
        if self.vip_pg_weight < 0:
            raise ValueError(f"vip_pg_weight must be >= 0, got {self.vip_pg_weight}.")
        try:
            weights = [weight for _, weight, _ in map(parse_spec, self.rewards)] if self.rewards else None
        except ValueError as err:
            raise ValueError(f"rewards: {err}") from None
        if self.reward_weights is not None and list(self.reward_weights) != weights:
            raise ValueError(
                "reward_weights is taken from the reward specs: give each reward its weight in `rewards` "
                "({name: ..., weight: ...}) instead."
            )
        self.reward_weights = weights
        super().__post_init__()


@dataclass
class VLMSFTConfig(
    AnswerArguments, LoraArguments, HeldOutArguments, SynthArguments, ScheduleDefaults, RunDefaults, SFTConfig
):
    """Stage sft: supervised fine-tuning of the VLM itself on the same VQA rows (loss on the answer tokens only),
    LoRA or full. Adapts a base model to a domain before its glimpse is trained; no glimpse is attached."""

    # The whole VLM trains: a lower rate, a shorter warm-up, and checkpoints (full weights + optimizer) seldom.
    learning_rate: float = field(
        default=2e-5, metadata={"help": "AdamW learning rate (the whole VLM trains: lower than the glimpse stages')."}
    )
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Linear warm-up: a step count, or a fraction of all steps when < 1."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})
    save_steps: float = field(default=500, metadata={"help": "Checkpoint every N steps (full weights + optimizer)."})
