"""`glimpserl train RECIPE.yaml [--key value ...]`: one linear main per stage.

- stage: sft  supervised fine-tuning of the VLM itself (full or LoRA); writes the model and checks its answers on the
  held-out split (eval_results.json).
- stage: vip  (stage 1) trains the glimpse token and VIP on a frozen VLM, writes the glimpse weights, calibrates the
  deployment threshold on the validation split when asked, and checks the hard keep mask on the held-out split.
- stage: grpo (stage 2, GlimpsePrune+) GRPO on the pruned model; writes the LoRA adapter or full weights + glimpse.

Each main reads top to bottom: data -> model -> peft config / rewards -> trainer -> train -> save -> held-out eval.
Every run also writes `glimpserl_run.json` (its data and prompt settings), which `glimpserl eval` follows.
Example: glimpserl train recipes/tiny/vip.yaml --max_steps 20
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

logger = logging.getLogger("glimpserl")


@dataclasses.dataclass
class RunData:
    """What every stage reads before its model loads."""

    train: object
    """The training DataConfig (a built-in set resolved to its train file)."""
    held_out: object | None
    """The held-out DataConfig evaluated after training, or None."""
    validation: object | None
    """The validation DataConfig (threshold calibration), or None."""
    rows: object
    """The validated training rows (canonical schema)."""
    report: object
    """What loading kept and skipped."""
    processor: object


def resolve_data(data_args, train_args):
    """Turn built-in set names into files; returns (train, held-out or None, validation or None) DataConfigs. A
    built-in training set also provides the held-out split (test) and the validation split unless other data is
    named."""
    from .data.synth.builtin import is_builtin_set
    from .data.synth.writer import builtin_split

    def split_file(name: str, split: str) -> str:
        with train_args.main_process_first(desc="built-in synthetic data"):
            return str(builtin_split(name, split, train_args))

    eval_path = train_args.eval_dataset
    val_path = getattr(train_args, "calibration_dataset", None)
    if is_builtin_set(data_args.dataset):
        eval_path = eval_path or data_args.dataset
        if train_args.synth_val and not val_path:
            val_path = split_file(data_args.dataset, "val")
        data_args = dataclasses.replace(data_args, dataset=split_file(data_args.dataset, "train"))
    if is_builtin_set(eval_path):
        eval_path = split_file(eval_path, "test")
    if is_builtin_set(val_path):
        val_path = split_file(val_path, "val")
    held_out = {"split": train_args.eval_split, "max_samples": train_args.eval_max_samples, "image_root": None}
    eval_args = dataclasses.replace(data_args, dataset=eval_path, **held_out) if eval_path else None
    val_args = dataclasses.replace(data_args, dataset=val_path, **held_out) if val_path else None
    return data_args, eval_args, val_args


def load_run_data(stage: str, model_args, data_args, train_args) -> RunData:
    """The data phase every stage starts with: seed, built-in sets, run card, processor, validated training rows."""
    from transformers import set_seed

    from ..models.loading import load_processor
    from .data.loading import load_vqa
    from .runs.card import write_run_card

    set_seed(train_args.seed)
    data_args, eval_args, val_args = resolve_data(data_args, train_args)
    if getattr(train_args, "deploy_keep_ratio", None) is not None and val_args is None:
        raise ValueError(
            "deploy_keep_ratio calibrates the keep threshold on a validation split: set calibration_dataset (or use "
            "a built-in dataset with synth_val > 0)."
        )
    write_run_card(stage, model_args, data_args, eval_args, train_args)
    processor = load_processor(model_args.model_name_or_path, data_args.min_pixels, data_args.max_pixels)
    rows, report = load_vqa(data_args)
    logger.info("%s", report.summary())
    return RunData(data_args, eval_args, val_args, rows, report, processor)


def load_held_out(config):
    """(rows, config) of held-out data whose answers are scored per question kind: the kind column comes along where
    the data has one (the built-in sets do)."""
    from .data.loading import load_vqa
    from .data.sources import read_table
    from .eval.arms import GROUP_COLUMN

    if GROUP_COLUMN in read_table(config.dataset, config.split).columns and GROUP_COLUMN not in config.extra_columns:
        config = dataclasses.replace(config, extra_columns=[*config.extra_columns, GROUP_COLUMN])
    rows, _ = load_vqa(config)
    return rows, config


def load_base_model(model_args):
    from ..models.loading import load_model

    return load_model(
        model_args.model_name_or_path, model_args.dtype, model_args.attn_implementation, model_args.seed_model
    )


def attach_glimpse(model, model_args):
    """A fresh glimpse from the recipe's keys, or the `glimpse_init` one running its own config with the threshold-type
    keys the recipe set on top (see GlimpseArguments.on_loaded; parsing refused keys that cannot apply)."""
    from ..models import add_glimpse, glimpse_module, load_glimpse

    if not model_args.glimpse_init:
        return add_glimpse(model, model_args.glimpse_config())
    load_glimpse(model, model_args.glimpse_init)
    glimpse = glimpse_module(model)
    glimpse.config = model_args.on_loaded(glimpse.config)
    return model


def save_run(trainer, processor, train_args) -> None:
    """The trained weights (and, for a stage that tunes the VLM, its processor beside them) in output_dir."""
    trainer.save_model(train_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(train_args.output_dir)


def write_results(results: dict, train_args, is_main: bool) -> None:
    if is_main:
        (Path(train_args.output_dir) / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))


def run_sft(model_args, data_args, train_args) -> dict:
    """Stage sft: fine-tune the VLM on the answers; writes the model + processor and the held-out answer accuracy."""
    from .data.conversation import conversation_dataset
    from .eval.answers import evaluate_answers
    from .trainers.sft import VLMSFTTrainer
    from .trainers.tuning import lora_config

    # data
    data = load_run_data("sft", model_args, data_args, train_args)
    # model, peft config
    model = load_base_model(model_args)
    peft_config = lora_config(train_args, model)  # the trainer freezes the vision encoder under full tuning
    # trainer, train, save
    dataset = conversation_dataset(data.rows, data.train)
    trainer = VLMSFTTrainer(model, train_args, dataset, data.processor, peft_config=peft_config)
    trained = trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    save_run(trainer, data.processor, train_args)
    results: dict = {
        "train_rows": data.report.rows_kept,
        "global_step": trainer.state.global_step,
        "train_seconds": trained.metrics.get("train_runtime"),
    }
    # held-out eval
    if data.held_out is not None:
        rows, held_out = load_held_out(data.held_out)
        batch = train_args.per_device_eval_batch_size
        results["eval"] = evaluate_answers(trainer.model, data.processor, rows, held_out, data.rows, batch)
        write_results(results, train_args, trainer.accelerator.is_main_process)
    return results


def run_vip(model_args, data_args, train_args) -> dict:
    """Stage 1: train the glimpse + VIP on the frozen model; writes the glimpse weights (threshold calibrated on the
    validation split when asked) and the hard-mask check on the held-out split."""
    from ..models import glimpse_module
    from .data.conversation import conversation_dataset
    from .data.loading import load_vqa
    from .eval.glimpse import calibrate_threshold, evaluate_glimpse
    from .trainers.vip import VIPTrainer

    # data
    data = load_run_data("vip", model_args, data_args, train_args)
    # model
    model = attach_glimpse(load_base_model(model_args), model_args)
    # trainer, train
    trainer = VIPTrainer(model, train_args, conversation_dataset(data.rows, data.train), data.processor)
    trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    # Every rank runs the same evaluations: under ZeRO-3 each forward gathers parameters from all ranks.
    evaluated = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    results: dict = {"train_rows": data.report.rows_kept, "global_step": trainer.state.global_step}
    # deployment threshold (validation split), save
    threshold = train_args.deploy_threshold
    if train_args.deploy_keep_ratio is not None:
        val_rows, _ = load_vqa(data.validation)
        calibration = calibrate_threshold(
            evaluated,
            data.processor,
            conversation_dataset(val_rows, data.validation),
            train_args.deploy_keep_ratio,
            batch_size=train_args.per_device_eval_batch_size,
        )
        results["calibration"] = {"source": data.validation.dataset, **calibration}
        threshold = calibration["threshold"]
    if threshold is not None:
        glimpse = glimpse_module(trainer.model)
        glimpse.config = dataclasses.replace(glimpse.config, threshold=threshold)
    trainer.save_model(train_args.output_dir)
    # held-out eval
    if data.held_out is not None:
        held_out_rows, _ = load_vqa(data.held_out)
        results["eval"] = evaluate_glimpse(
            evaluated,
            data.processor,
            conversation_dataset(held_out_rows, data.held_out),
            batch_size=train_args.per_device_eval_batch_size,
            max_answer_tokens=train_args.max_answer_tokens,
        )
    if "eval" in results or "calibration" in results:
        write_results(results, train_args, trainer.accelerator.is_main_process)
    return results


def _init_cpu_deepspeed(train_args) -> None:
    """On CPU, DeepSpeed must own the (gloo) process group before TRL builds a ZeRO-3 reference model."""
    if train_args.use_cpu and getattr(train_args, "deepspeed_plugin", None) is not None:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def run_grpo(model_args, data_args, train_args) -> dict:
    """Stage 2: GRPO on the pruned model; writes the LoRA adapter (or full weights) + glimpse to output_dir."""
    from ..rewards import build_rewards
    from .data.conversation import conversation_dataset
    from .trainers.grpo import GlimpseGRPOTrainer
    from .trainers.tuning import lora_config

    _init_cpu_deepspeed(train_args)
    # data
    data = load_run_data("grpo", model_args, data_args, train_args)
    # model, peft config, rewards (their weights are train_args.reward_weights, from the same specs)
    model = attach_glimpse(load_base_model(model_args), model_args)
    peft_config = lora_config(train_args, model)  # the trainer freezes the vision encoder under full tuning
    reward_funcs, _ = build_rewards(train_args.rewards)
    # trainer, train, save
    dataset = conversation_dataset(data.rows, data.train)
    trainer = GlimpseGRPOTrainer(model, train_args, dataset, data.processor, reward_funcs, peft_config=peft_config)
    trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
    save_run(trainer, data.processor, train_args)
    return {"train_rows": data.report.rows_kept, "global_step": trainer.state.global_step}


RUNS = {"sft": run_sft, "vip": run_vip, "grpo": run_grpo}


def main(argv: list[str]) -> int:
    from .config.recipe import STAGES, parse_recipe

    if set(RUNS) != set(STAGES):  # a stage added to the configs needs its main here
        raise RuntimeError(f"stages {sorted(STAGES)} and their mains {sorted(RUNS)} disagree.")
    if not argv or argv[0].startswith("-"):
        raise ValueError("Usage: glimpserl train RECIPE.yaml [--key value ...]")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe_args, *configs = parse_recipe(argv[0], argv[1:])
    RUNS[recipe_args.stage](*configs)
    return 0
