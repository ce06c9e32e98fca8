"""`glimpserl train RECIPE.yaml [--key value ...]`: run the recipe's stage.

- stage: sft  supervised fine-tuning of the VLM itself (full or LoRA); writes the model and checks its answers on the
  held-out split (eval_results.json).
- stage: vip  (stage 1) trains the glimpse token and VIP on a frozen VLM, writes the glimpse weights, calibrates the
  deployment threshold on the validation split when asked, and checks the hard keep mask on the held-out split.
- stage: grpo (stage 2, GlimpsePrune+) GRPO on the pruned model; writes the LoRA adapter or full weights + glimpse.
Every run also writes `glimpserl_run.json` (its data and prompt settings), which `glimpserl eval` follows.
Example: glimpserl train recipes/tiny/vip.yaml --max_steps 20
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from .run_card import write_run_card

logger = logging.getLogger("glimpserl")
BUILTIN_SETS = {"builtin:synth": "glimpse", "builtin:shapes": "shapes"}
"""Built-in synthetic datasets (written into the cache on first use) and their task."""


def materialize_synth(name: str, train_args) -> Path:
    """Write the built-in set `name` once per settings into the cache and return its folder."""
    from .synth import cached_synth

    with train_args.main_process_first(desc="built-in synthetic data"):
        return cached_synth(
            train_args.synth_train,
            train_args.synth_test,
            train_args.synth_image_size,
            train_args.synth_seed,
            task=BUILTIN_SETS[name],
            n_val=train_args.synth_val,
            curriculum=train_args.synth_curriculum,
        )


def resolve_data(data_args, train_args):
    """Turn built-in set names into real files; returns (train DataConfig, held-out DataConfig or None, validation
    DataConfig or None). A built-in training set also provides the held-out split (test) and the validation split
    unless other data is named."""
    eval_path = train_args.eval_dataset
    val_path = getattr(train_args, "calibration_dataset", None)
    if data_args.dataset in BUILTIN_SETS:
        folder = materialize_synth(data_args.dataset, train_args)
        eval_path = eval_path or data_args.dataset
        val_path = val_path or str(folder / "val.jsonl") if train_args.synth_val else val_path
        data_args = dataclasses.replace(data_args, dataset=str(folder / "train.jsonl"))
    if eval_path in BUILTIN_SETS:
        eval_path = str(materialize_synth(eval_path, train_args) / "test.jsonl")
    if val_path in BUILTIN_SETS:
        val_path = str(materialize_synth(val_path, train_args) / "val.jsonl")
    held_out = {"split": train_args.eval_split, "max_samples": train_args.eval_max_samples, "image_root": None}
    eval_args = dataclasses.replace(data_args, dataset=eval_path, **held_out) if eval_path else None
    val_args = dataclasses.replace(data_args, dataset=val_path, **held_out) if val_path else None
    return data_args, eval_args, val_args


def resume_point(train_args) -> str | None:
    """resume_from_checkpoint: a folder, or `last` / `true` for the newest COMPLETE checkpoint in output_dir."""
    from .checkpoint import resume_checkpoint

    return resume_checkpoint(train_args.output_dir, train_args.resume_from_checkpoint)


def _report(results: dict, train_args, is_main: bool) -> None:
    if is_main:
        (Path(train_args.output_dir) / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))


def run_sft(model_args, data_args, train_args) -> dict:
    """Stage sft: fine-tune the VLM on the answers; writes the model + processor and the held-out answer accuracy."""
    from transformers import set_seed

    from ..models.loading import load_model, load_processor
    from .data import conversation_dataset, load_vqa
    from .sft_eval import evaluate_answers
    from .sft_trainer import VLMSFTTrainer

    set_seed(train_args.seed)
    data_args, eval_args, _ = resolve_data(data_args, train_args)
    write_run_card("sft", model_args, data_args, eval_args, train_args)
    processor = load_processor(model_args.model_name_or_path, data_args.min_pixels, data_args.max_pixels)
    dataset, report = load_vqa(data_args)
    logger.info("%s", report.summary())
    model = load_model(
        model_args.model_name_or_path, model_args.dtype, model_args.attn_implementation, model_args.seed_model
    )
    trainer = VLMSFTTrainer(model, train_args, conversation_dataset(dataset, data_args), processor)
    trained = trainer.train(resume_from_checkpoint=resume_point(train_args))
    trainer.save_model(train_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(train_args.output_dir)
    results: dict = {
        "train_rows": report.rows_kept,
        "global_step": trainer.state.global_step,
        "train_seconds": trained.metrics.get("train_runtime"),
    }
    if eval_args is not None:
        results["eval"] = evaluate_answers(
            trainer.model, processor, eval_args, train_rows=dataset, batch_size=train_args.per_device_eval_batch_size
        )
        _report(results, train_args, trainer.accelerator.is_main_process)
    return results


def run_vip(model_args, data_args, train_args) -> dict:
    from transformers import set_seed

    from ..models import glimpse_module
    from ..models.loading import load_processor
    from .data import conversation_dataset, load_vqa
    from .vip_eval import calibrate_threshold, evaluate_glimpse
    from .vip_trainer import VIPTrainer

    set_seed(train_args.seed)
    data_args, eval_args, val_args = resolve_data(data_args, train_args)
    if train_args.deploy_keep_ratio is not None and val_args is None:
        raise ValueError(
            "deploy_keep_ratio calibrates the keep threshold on a validation split: set calibration_dataset (or use "
            "a built-in dataset with synth_val > 0)."
        )
    write_run_card("vip", model_args, data_args, eval_args, train_args)
    processor = load_processor(model_args.model_name_or_path, data_args.min_pixels, data_args.max_pixels)
    dataset, report = load_vqa(data_args)
    logger.info("%s", report.summary())
    model = _load_glimpse_model(model_args)
    trainer = VIPTrainer(model, train_args, conversation_dataset(dataset, data_args), processor)
    trainer.train(resume_from_checkpoint=resume_point(train_args))
    # Every rank runs the same evaluations: under ZeRO-3 each forward gathers parameters from all ranks.
    evaluated = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    results: dict = {"train_rows": report.rows_kept, "global_step": trainer.state.global_step}
    threshold = train_args.deploy_threshold
    if train_args.deploy_keep_ratio is not None:
        val_data, _ = load_vqa(val_args)
        calibration = calibrate_threshold(
            evaluated,
            processor,
            conversation_dataset(val_data, val_args),
            train_args.deploy_keep_ratio,
            batch_size=train_args.per_device_eval_batch_size,
        )
        results["calibration"] = {"source": val_args.dataset, **calibration}
        threshold = calibration["threshold"]
    if threshold is not None:
        glimpse = glimpse_module(trainer.model)
        glimpse.config = dataclasses.replace(glimpse.config, threshold=threshold)
    trainer.save_model(train_args.output_dir)
    if eval_args is not None:
        eval_data, _ = load_vqa(eval_args)
        results["eval"] = evaluate_glimpse(
            evaluated,
            processor,
            conversation_dataset(eval_data, eval_args),
            batch_size=train_args.per_device_eval_batch_size,
            max_answer_tokens=train_args.max_answer_tokens,
        )
    if "eval" in results or "calibration" in results:
        _report(results, train_args, trainer.accelerator.is_main_process)
    return results


def _load_glimpse_model(model_args):
    from ..models import add_glimpse, load_glimpse
    from ..models.loading import load_model

    model = load_model(
        model_args.model_name_or_path, model_args.dtype, model_args.attn_implementation, model_args.seed_model
    )
    if model_args.glimpse_init:
        return load_glimpse(model, model_args.glimpse_init)
    return add_glimpse(model, model_args.glimpse_config())


def _init_cpu_deepspeed(train_args) -> None:
    """On CPU, DeepSpeed must own the (gloo) process group before TRL builds a ZeRO-3 reference model."""
    if train_args.use_cpu and getattr(train_args, "deepspeed_plugin", None) is not None:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def run_grpo(model_args, data_args, train_args) -> dict:
    """Stage 2: GRPO on the pruned model; writes the LoRA adapter (or full weights) + glimpse to output_dir."""
    from transformers import set_seed

    from ..models.loading import load_processor
    from .data import conversation_dataset, load_vqa
    from .grpo_trainer import GlimpseGRPOTrainer

    set_seed(train_args.seed)
    _init_cpu_deepspeed(train_args)
    data_args, eval_args, _ = resolve_data(data_args, train_args)
    write_run_card("grpo", model_args, data_args, eval_args, train_args)
    processor = load_processor(model_args.model_name_or_path, data_args.min_pixels, data_args.max_pixels)
    dataset, report = load_vqa(data_args)
    logger.info("%s", report.summary())
    model = _load_glimpse_model(model_args)
    trainer = GlimpseGRPOTrainer(model, train_args, conversation_dataset(dataset, data_args), processor)
    trainer.train(resume_from_checkpoint=resume_point(train_args))
    trainer.save_model(train_args.output_dir)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(train_args.output_dir)
    return {"train_rows": report.rows_kept, "global_step": trainer.state.global_step}


RUNS = {"sft": run_sft, "vip": run_vip, "grpo": run_grpo}


def main(argv: list[str]) -> int:
    from .recipe import parse_recipe

    if not argv or argv[0].startswith("-"):
        raise ValueError("Usage: glimpserl train RECIPE.yaml [--key value ...]")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe_args, *configs = parse_recipe(argv[0], argv[1:])
    RUNS[recipe_args.stage](*configs)
    return 0
