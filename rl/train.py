"""`glimpserl train RECIPE.yaml [--key value ...]`: run the recipe's stage.

Stage 1 (stage: vip) trains the glimpse token and VIP on a frozen VLM and writes the glimpse weights to
output_dir, then checks them on the held-out split with the hard keep mask (eval_results.json).
Example: glimpserl train recipes/tiny/vip.yaml --max_steps 20
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

logger = logging.getLogger("glimpserl")
BUILTIN_SYNTH = "builtin:synth"


def materialize_synth(train_args) -> Path:
    """Write the built-in synthetic set once per (size, seed) into the cache and return its folder."""
    from .synth import cached_synth

    with train_args.main_process_first(desc="built-in synthetic data"):
        return cached_synth(
            train_args.synth_train, train_args.synth_test, train_args.synth_image_size, train_args.seed
        )


def resolve_data(data_args, train_args):
    """Turn `builtin:synth` into real files; returns (train DataConfig, eval DataConfig or None)."""
    eval_path = train_args.eval_dataset
    if data_args.dataset == BUILTIN_SYNTH or eval_path == BUILTIN_SYNTH:
        folder = materialize_synth(train_args)
        if data_args.dataset == BUILTIN_SYNTH:
            data_args = dataclasses.replace(data_args, dataset=str(folder / "train.jsonl"))
            eval_path = eval_path or BUILTIN_SYNTH
        if eval_path == BUILTIN_SYNTH:
            eval_path = str(folder / "test.jsonl")
    if not eval_path:
        return data_args, None
    eval_args = dataclasses.replace(
        data_args,
        dataset=eval_path,
        split=train_args.eval_split,
        max_samples=train_args.eval_max_samples,
        image_root=None,
    )
    return data_args, eval_args


def resume_point(train_args) -> str | None:
    """resume_from_checkpoint: a folder, or `last` / `true` for the newest COMPLETE checkpoint in output_dir."""
    from .checkpoint import resume_checkpoint

    return resume_checkpoint(train_args.output_dir, train_args.resume_from_checkpoint)


def run_vip(model_args, data_args, train_args) -> dict:
    from transformers import set_seed

    from ..models import glimpse_module
    from ..models.loading import load_processor
    from .data import conversation_dataset, load_vqa
    from .vip_eval import evaluate_glimpse
    from .vip_trainer import VIPTrainer

    set_seed(train_args.seed)
    data_args, eval_args = resolve_data(data_args, train_args)
    processor = load_processor(model_args.model_name_or_path, data_args.min_pixels, data_args.max_pixels)
    dataset, report = load_vqa(data_args)
    logger.info("%s", report.summary())
    model = _load_glimpse_model(model_args)
    trainer = VIPTrainer(model, train_args, conversation_dataset(dataset, data_args), processor)
    trainer.train(resume_from_checkpoint=resume_point(train_args))
    if train_args.deploy_threshold is not None:
        glimpse = glimpse_module(trainer.model)
        glimpse.config = dataclasses.replace(glimpse.config, threshold=train_args.deploy_threshold)
    trainer.save_model(train_args.output_dir)
    results: dict = {"train_rows": report.rows_kept, "global_step": trainer.state.global_step}
    if eval_args is not None:
        # Every rank runs the same evaluation: under ZeRO-3 each forward gathers parameters from all ranks.
        eval_data, _ = load_vqa(eval_args)
        results["eval"] = evaluate_glimpse(
            trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model,
            processor,
            conversation_dataset(eval_data, eval_args),
            batch_size=train_args.per_device_eval_batch_size,
            max_answer_tokens=train_args.max_answer_tokens,
        )
        if trainer.accelerator.is_main_process:
            out = Path(train_args.output_dir) / "eval_results.json"
            out.write_text(json.dumps(results, indent=2) + "\n")
            print(json.dumps(results, indent=2))
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
    data_args, _ = resolve_data(data_args, train_args)
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


def main(argv: list[str]) -> int:
    from .recipe import parse_recipe

    if not argv or argv[0].startswith("-"):
        raise ValueError("Usage: glimpserl train RECIPE.yaml [--key value ...]")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe_args, *configs = parse_recipe(argv[0], argv[1:])
    run = {"vip": run_vip, "grpo": run_grpo}[recipe_args.stage]
    run(*configs)
    return 0
