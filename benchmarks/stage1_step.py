"""Stage-1 step time relative to one plain forward + backward of the same batch, measured side by side.

    python -m glimpserl.benchmarks.stage1_step [--batch 4 --image-size 448 --repeats 5]

Arms (interleaved, median of `repeats` after a warm-up):
- plain: the vanilla model, forward + backward of the answer cross-entropy with every parameter trainable
  (what one SFT step of the same batch costs);
- stage 1: the VIP trainer's loss (teacher forward without grad + masked-mode student forward + backward into
  the glimpse and VIP only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import datasets
import torch


def _batch(processor, size: int, n: int):
    from ..rl.collate import GlimpseCollator
    from ..rl.synth import make_sample

    samples = []
    for i in range(n):
        s = make_sample(0, "train", i, image_size=size)
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}]
        samples.append({"prompt": prompt, "images": [s.image], "answer": [s.answer], "boxes": [list(s.target.box)]})
    return GlimpseCollator(processor)(samples)


def run(batch_size: int = 4, image_size: int = 448, repeats: int = 5, threads: int | None = None) -> dict:
    from ..models import GlimpseConfig, add_glimpse
    from ..models.tiny import build_tiny_model, build_tiny_processor
    from ..rl.configs import VIPTrainingConfig
    from ..rl.vip_trainer import MODEL_INPUTS, VIPTrainer

    if threads:
        torch.set_num_threads(threads)
    processor = build_tiny_processor("qwen2_5_vl", max_pixels=image_size * image_size)
    batch = _batch(processor, image_size, batch_size)
    inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
    model = add_glimpse(build_tiny_model("qwen2_5_vl"), GlimpseConfig(layer=2))
    args = VIPTrainingConfig(output_dir="/tmp/glimpserl-bench", report_to="none", box_weight=1.0, use_cpu=True)
    placeholder = datasets.Dataset.from_list([{"images": [], "prompt": [], "answer": ["x"]}])  # never iterated
    trainer = VIPTrainer(model, args, train_dataset=placeholder, processing_class=processor)

    def plain():
        for p in model.parameters():
            p.requires_grad_(True)
        out = model(**inputs, labels=batch["labels"], glimpse_mode="off", use_cache=False)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    def stage1():
        trainer.model.train()
        from ..rl.vip_trainer import freeze_all_but_glimpse

        freeze_all_but_glimpse(model)
        trainer.compute_loss(model, dict(batch)).backward()
        model.zero_grad(set_to_none=True)

    arms = {"plain": plain, "stage1": stage1}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for fn in arms.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    visual = int((batch["input_ids"] == model.config.image_token_id).sum()) // batch_size
    return {
        "batch": batch_size,
        "visual_tokens_per_image": visual,
        "plain_fwd_bwd_s": med["plain"],
        "stage1_step_s": med["stage1"],
        "ratio": med["stage1"] / med["plain"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glimpserl.benchmarks.stage1_step",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--batch", type=int, default=4, help="Samples per batch.")
    parser.add_argument("--image-size", type=int, default=448, help="Image side in pixels (448 -> 256 tokens).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repetitions per arm (median reported).")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores).")
    parser.add_argument("--json", default=None, help="Also write the result to this JSON file.")
    args = parser.parse_args(argv)
    result = run(args.batch, args.image_size, args.repeats, args.threads)
    print("| arm | seconds |\n| --- | --- |")
    print(f"| plain forward + backward | {result['plain_fwd_bwd_s']:.3f} |")
    print(f"| stage-1 step | {result['stage1_step_s']:.3f} |")
    print(f"| ratio stage-1 / plain | {result['ratio']:.2f} |")
    print(f"batch {result['batch']}, {result['visual_tokens_per_image']} visual tokens per image")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
