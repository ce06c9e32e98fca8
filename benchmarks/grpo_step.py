"""GRPO step time: glimpserl's pruned trainer vs plain `trl.GRPOTrainer`, same tiny model, data and LoRA.

    python -m glimpserl.benchmarks.grpo_step [--image-size 896 --keep-ratio 0.1 --steps 3 --rounds 2]

Arms, run in rounds (A B C A B C ...), each a fresh trainer for `steps` optimizer steps; the first step of each
run is a warm-up and is dropped; the median of TRL's own `step_time` log is reported:
- trl: the vanilla model under `trl.GRPOTrainer`;
- pruned: `GlimpseGRPOTrainer`, deterministic masks keeping `keep_ratio` of the visual tokens;
- keep_all: `GlimpseGRPOTrainer` keeping every visual token (the trainer's own overhead).
An image of 896x896 px gives 1,024 visual tokens (one per 28x28 px).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

import torch


def _dataset(folder, image_size: int, rows: int):
    from ..rl.data import DataConfig, conversation_dataset, load_vqa
    from ..rl.synth import write_synth

    data = write_synth(folder, n_train=rows, n_test=1, image_size=image_size, seed=0)
    config = DataConfig(dataset=str(data / "train.jsonl"), max_pixels=image_size * image_size)
    return conversation_dataset(load_vqa(config)[0], config)


def _common(output_dir: str, steps: int) -> dict:
    return dict(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-4,
        beta=0.04,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        remove_unused_columns=False,
    )


def _run_arm(arm: str, dataset, processor, keep_ratio: float, steps: int) -> list[float]:
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from ..models import GlimpseConfig, add_glimpse, get_adapter
    from ..models.tiny import build_tiny_model
    from ..rewards import build_reward
    from ..rl.configs import GlimpseGRPOConfig
    from ..rl.grpo_trainer import GlimpseGRPOTrainer

    model = build_tiny_model("qwen2_5_vl", seed=0)
    with tempfile.TemporaryDirectory() as out:
        if arm == "trl":
            lora = LoraConfig(r=8, lora_alpha=16, target_modules=get_adapter(model).lora_target_modules())
            args = GRPOConfig(**_common(out, steps))
            trainer = GRPOTrainer(
                model,
                [build_reward("exact_match")],
                args=args,
                train_dataset=dataset,
                processing_class=processor,
                peft_config=lora,
            )
        else:
            ratio = keep_ratio if arm == "pruned" else None
            add_glimpse(model, GlimpseConfig(layer=2, threshold=0.0, max_keep_ratio=ratio))
            args = GlimpseGRPOConfig(
                **_common(out, steps),
                mask_policy="deterministic",
                rewards=["exact_match"],
                lora_r=8,
                lora_alpha=16,
                lora_dropout=0.0,
            )
            trainer = GlimpseGRPOTrainer(model, args, dataset, processor)
        trainer.train()
    times = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    return times[1:]  # the first step pays one-off costs


def run(image_size: int = 896, keep_ratio: float = 0.1, steps: int = 3, rounds: int = 2) -> dict:
    from ..models.tiny import build_tiny_processor

    torch.manual_seed(0)
    processor = build_tiny_processor("qwen2_5_vl", max_pixels=image_size * image_size)
    with tempfile.TemporaryDirectory() as folder:
        dataset = _dataset(folder, image_size, rows=8)
        times: dict[str, list[float]] = {"trl": [], "pruned": [], "keep_all": []}
        for _ in range(rounds):
            for arm in times:
                times[arm] += _run_arm(arm, dataset, processor, keep_ratio, steps)
    med = {arm: statistics.median(t) for arm, t in times.items()}
    return {
        "visual_tokens_per_image": (image_size // 28) ** 2,
        "keep_ratio": keep_ratio,
        "step_s": med,
        "pruned_over_trl": med["pruned"] / med["trl"],
        "keep_all_over_trl": med["keep_all"] / med["trl"],
        "samples": {arm: len(t) for arm, t in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glimpserl.benchmarks.grpo_step",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--image-size", type=int, default=896, help="Image side in px (896 -> 1,024 tokens).")
    parser.add_argument("--keep-ratio", type=float, default=0.1, help="Kept fraction of visual tokens (pruned arm).")
    parser.add_argument("--steps", type=int, default=3, help="Optimizer steps per run (the first is dropped).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds over the three arms.")
    parser.add_argument("--json", default=None, help="Also write the result to this JSON file.")
    args = parser.parse_args(argv)
    result = run(args.image_size, args.keep_ratio, args.steps, args.rounds)
    med = result["step_s"]
    print("| arm | step time (s) | ratio to plain TRL |\n| --- | --- | --- |")
    print(f"| plain trl.GRPOTrainer | {med['trl']:.2f} | 1.00 |")
    print(f"| glimpserl, keep {args.keep_ratio:.0%} | {med['pruned']:.2f} | {result['pruned_over_trl']:.2f} |")
    print(f"| glimpserl, keep all | {med['keep_all']:.2f} | {result['keep_all_over_trl']:.2f} |")
    print(f"{result['visual_tokens_per_image']} visual tokens per image; medians of {result['samples']} steps")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
