"""Stage-1 step time relative to one plain forward + backward of the same batch, measured side by side.

    python -m glimpserl.benchmarks.stage1_step --threads 1 --json stage1_step.json
    python -m glimpserl.benchmarks.stage1_step --hidden 64 --layers 4 --heads 4 --vision-hidden 32 \\
        --vision-layers 4 --visual-tokens 64 --vocab 4096 --repeats 1  # smoke

Model: the prefill benchmark's shape flags (text hidden 512, 12 layers, 8 heads / 2 KV heads, K = 8; vision 8
blocks x 128), random weights, Qwen2.5's 151,936-token vocabulary (--vocab); a batch of synthetic samples with one
image of >= --visual-tokens visual tokens each and a short answer.

Arms (interleaved, median of `repeats` after a warm-up):
- plain: the vanilla model, forward + backward of the answer cross-entropy with every parameter trainable
  (what one SFT step of the same batch costs);
- stage 1: the VIP trainer's loss (masked-mode student forward with the unpruned teacher computed inside it, from
  the student's vision encoder call and prompt layers 0..K, + backward into the glimpse and VIP only);
- stage 1, separate teacher (`--teacher_forward separate`): the same loss with the teacher as a second, vanilla
  forward of the whole model, what the shared teacher saves.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import torch

from glimpserl.benchmarks.arguments import add_model_arguments
from glimpserl.benchmarks.families import family_of
from glimpserl.benchmarks.measure import build_arm, sync
from glimpserl.benchmarks.prefill_decode import check_spec, spec_from_args
from glimpserl.benchmarks.report import model_name

QWEN_VOCAB = 151_936


def _batch(processor, size: int, n: int):
    from ..rl.data.collate import GlimpseCollator
    from ..rl.data.synth.glimpse import make_sample

    samples = []
    for i in range(n):
        s = make_sample(0, "train", i, image_size=size)
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}]
        samples.append({"prompt": prompt, "images": [s.image], "answer": [s.answer], "boxes": [list(s.target.box)]})
    return GlimpseCollator(processor)(samples)


def run(args: argparse.Namespace) -> dict:
    import datasets

    from ..models import GlimpseConfig, add_glimpse
    from ..rl.config.stages import VIPTrainingConfig
    from ..rl.data.collate import model_inputs
    from ..rl.trainers.vip import VIPTrainer, freeze_all_but_glimpse

    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    torch.set_num_threads(args.threads)
    spec = spec_from_args(args)
    family = family_of(spec.family)
    processor = family.processor(spec)
    size = family.image_pixels(spec)[0]  # a square image
    batch = {
        k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in _batch(processor, size, args.batch).items()
    }
    inputs = model_inputs(batch)
    model = add_glimpse(build_arm(spec, processor, device, "unpruned"), GlimpseConfig(layer=spec.layer_k))
    placeholder = datasets.Dataset.from_list([{"images": [], "prompt": [], "answer": ["x"]}])  # never iterated
    trainers = {
        teacher: VIPTrainer(
            model,
            VIPTrainingConfig(
                output_dir="/tmp/glimpserl-bench",
                report_to="none",
                box_weight=1.0,
                use_cpu=device.type == "cpu",
                teacher_forward=teacher,
            ),
            train_dataset=placeholder,
            processing_class=processor,
        )
        for teacher in ("shared", "separate")
    }

    def plain():
        for p in model.parameters():
            p.requires_grad_(True)
        out = model(**inputs, labels=batch["labels"], glimpse_mode="off", use_cache=False)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    def stage1(teacher: str):
        def step():
            model.train()
            freeze_all_but_glimpse(model)
            trainers[teacher].compute_loss(model, dict(batch)).backward()
            model.zero_grad(set_to_none=True)

        return step

    arms = {"plain": plain, "stage1": stage1("shared"), "stage1_separate": stage1("separate")}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for fn in arms.values():  # warm-up
        fn()
    for r in range(args.repeats):
        for name in arms if r % 2 == 0 else list(arms)[::-1]:
            sync(device)
            start = time.perf_counter()
            arms[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    visual = int((batch["input_ids"] == model.config.image_token_id).sum()) // args.batch
    return {
        "model": dataclasses.asdict(spec),
        "device": device.type,
        "threads": args.threads,
        "batch": args.batch,
        "visual_tokens_per_image": visual,
        "plain_fwd_bwd_s": med["plain"],
        "stage1_step_s": med["stage1"],
        "stage1_separate_teacher_s": med["stage1_separate"],
        "ratio": med["stage1"] / med["plain"],
        "shared_teacher_ratio": med["stage1"] / med["stage1_separate"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m glimpserl.benchmarks.stage1_step",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(parser, vocab=QWEN_VOCAB)
    parser.add_argument("--visual-tokens", type=int, default=1024, help="At least this many visual tokens per image.")
    parser.add_argument("--batch", type=int, default=4, help="Samples per batch.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repetitions per arm (median reported).")
    parser.add_argument("--json", default=None, help="Also write the result to this JSON file.")
    parser.set_defaults(keep_ratio=1.0)  # the model spec's; stage 1 learns the mask, it keeps no fixed share
    args = parser.parse_args(argv)
    try:
        check_spec(spec_from_args(args))
    except ValueError as err:
        parser.error(str(err))
    return args


def markdown_report(result: dict) -> str:
    model = result["model"]
    return "\n".join(
        [
            "| arm | seconds |",
            "| --- | --- |",
            f"| plain forward + backward | {result['plain_fwd_bwd_s']:.3f} |",
            f"| stage-1 step | {result['stage1_step_s']:.3f} |",
            f"| stage-1 step, separate teacher forward | {result['stage1_separate_teacher_s']:.3f} |",
            f"| ratio stage-1 / plain | {result['ratio']:.2f} |",
            f"| ratio stage-1 / stage-1 with a separate teacher | {result['shared_teacher_ratio']:.2f} |",
            "",
            f"{model_name(model)}; batch {result['batch']}, {result['visual_tokens_per_image']} visual tokens per "
            f"image; text hidden {model['hidden']}, {model['layers']} layers, K = {model['layer_k']}, vocabulary "
            f"{model['vocab']}; {result['device']}, {result['threads']} threads",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print(markdown_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
