"""The TRL / transformers hooks and internals glimpserl relies on still exist with the expected shapes."""

import dataclasses
import inspect

import pytest
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from glimpserl.rl.config.stages import GlimpseGRPOConfig, VIPTrainingConfig, VLMSFTConfig

OVERRIDDEN = {
    SFTTrainer: [
        "compute_loss",
        "save_model",
        "_load_from_checkpoint",
        "_save_checkpoint",
        "train",
        "_init_training_state",
    ],
    GRPOTrainer: [
        "_generate_single_turn",
        "_calculate_rewards",
        "_generate_and_score_completions",
        "_get_per_token_logps_and_entropies",
        "_compute_loss",
        "log",
        "save_model",
        "_save_checkpoint",
        "train",
        "_init_training_state",
        "_save_rng_state",
        "_load_rng_state",
    ],
}


@pytest.mark.parametrize(("cls", "name"), [(c, n) for c, names in OVERRIDDEN.items() for n in names])
def test_overridden_trainer_hooks_exist(cls, name):
    assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} is gone: update glimpserl's override"


def test_hook_signatures_we_depend_on():
    params = list(inspect.signature(SFTTrainer._init_training_state).parameters)
    assert params[1:4] == ["max_steps", "num_update_steps_per_epoch", "num_train_epochs"]
    params = inspect.signature(GRPOTrainer._generate_single_turn).parameters
    assert list(params)[1:5] == ["prompt_ids", "images", "multimodal_fields", "num_generations"]
    params = inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters
    assert {"input_ids", "attention_mask", "logits_to_keep", "pixel_values", "image_grid_thw", "num_images"} <= set(
        params
    )
    assert list(inspect.signature(GRPOTrainer._calculate_rewards).parameters)[1:] == [
        "inputs",
        "prompts",
        "completions",
        "completion_ids_list",
    ]


def test_transformers_internals_we_use():
    from transformers.cache_utils import DynamicLayer
    from transformers.masking_utils import create_causal_mask
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VLDecoderLayer,
        Qwen2_5_VLModel,
        apply_rotary_pos_emb,
    )
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLModel
    from transformers.vision_utils import get_vision_window_index

    assert {"layer_idx", "cache"} <= set(inspect.signature(create_causal_mask).parameters)
    for layer in (Qwen2_5_VLDecoderLayer, Qwen2VLDecoderLayer):  # the cache keyword pruned_decoder_forward passes
        assert "cache" in inspect.signature(layer.forward).parameters
    assert "mm_token_type_ids" in inspect.signature(Qwen2_5_VLModel.get_rope_index).parameters
    assert "mm_token_type_ids" in inspect.signature(Qwen2VLModel.get_rope_index).parameters
    assert callable(apply_rotary_pos_emb) and callable(get_vision_window_index)
    assert hasattr(DynamicLayer, "crop") and "keys" in inspect.getsource(DynamicLayer.update)


SYNTH = {"synth_train", "synth_val", "synth_test", "synth_image_size", "synth_seed", "synth_curriculum"}
HELD_OUT = {"eval_dataset", "eval_split", "eval_max_samples"}
LORA = {"use_lora", "lora_r", "lora_alpha", "lora_dropout", "freeze_vision"}
OWN_FIELDS = {
    VIPTrainingConfig: {
        "kl_weight",
        "teacher_forward",
        "sparsity",
        "target_keep_ratio",
        "sparsity_weight",
        "box_weight",
        "box_dice_weight",
        "box_bce_weight",
        "box_pos_weight",
        "box_focal_gamma",
        "lm_weight",
        "relaxation",
        "relaxation_temperature",
        "max_answer_tokens",
        "deploy_threshold",
        "deploy_keep_ratio",
        "calibration_dataset",
    }
    | SYNTH
    | HELD_OUT,
    GlimpseGRPOConfig: {"mask_policy", "vip_pg_weight", "rewards", "mask_seed"} | LORA | SYNTH | HELD_OUT,
    VLMSFTConfig: {"max_answer_tokens"} | LORA | SYNTH | HELD_OUT,
}


@pytest.mark.parametrize(
    ("ours", "base"), [(VIPTrainingConfig, SFTConfig), (GlimpseGRPOConfig, GRPOConfig), (VLMSFTConfig, SFTConfig)]
)
def test_config_fields_are_ours_or_upstream(ours, base):
    """Every field is either one glimpserl reads or an upstream one we re-default. A re-default of a field upstream
    dropped (transformers 5 folded warmup_ratio into warmup_steps) would otherwise be an orphan doing nothing."""
    upstream = {f.name for f in dataclasses.fields(base)}
    own = {f.name for f in dataclasses.fields(ours)} - upstream
    assert own == OWN_FIELDS[ours]


def test_shared_config_fields_are_declared_once_in_their_mixin():
    """synth_* fields live in SynthArguments and eval_* in HeldOutArguments only: a stage config that re-declared one
    would let its default and help drift from the other stages'."""
    import inspect

    from glimpserl.rl.config import stages as configs

    owners = {"synth_": configs.SynthArguments, "eval_": configs.HeldOutArguments}
    seen = set()
    for cls in (configs.VIPTrainingConfig, configs.GlimpseGRPOConfig, configs.VLMSFTConfig):
        for klass in cls.__mro__:
            if not klass.__module__.startswith("glimpserl"):
                continue
            for name in inspect.get_annotations(klass):
                for prefix, owner in owners.items():
                    if name.startswith(prefix):
                        assert klass is owner, f"{klass.__name__} re-declares {name} (owned by {owner.__name__})"
                        seen.add(owner)
    assert seen == set(owners.values())
