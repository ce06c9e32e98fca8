"""The `glimpserl` command: one subcommand per job; `glimpserl SUBCOMMAND --help` explains each."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .rl.config.names import DEFAULT_MODEL, DTYPES

DEFAULT_QUESTION_SEED = 0
SYNTH_TASKS = ("glimpse", "shapes", "places")
"""The tasks of `glimpserl data synth --task` (glimpserl.rl.data.synth.writer.TASKS; a test keeps the two equal)."""


def _add_visualize(subparsers) -> None:
    from .rl.config.names import DtypeArguments, GenerationArguments, GlimpseOverrides
    from .rl.data.settings import PromptArguments
    from .rl.eval.settings import add_options

    p = subparsers.add_parser(
        "visualize",
        help="Show which visual tokens the glimpse keeps for an image and a question (writes a PNG).",
        description="Run the pruned model on one image + question, generate an answer, and write a PNG in which the "
        "visual tokens dropped after layer K are dimmed. With no arguments it uses the built-in tiny model and a "
        "built-in synthetic image (an untrained VIP unless --glimpse is given).",
    )
    p.add_argument(
        "--model",
        default=None,
        help=f"Base model: a folder, hub id or builtin:... Default: the base model of the --glimpse run (its run card), "
        f"else {DEFAULT_MODEL}.",
    )
    p.add_argument("--glimpse", default=None, help="Folder with trained glimpse weights (from training or export).")
    p.add_argument("--image", default=None, help="Image file. Default: a built-in synthetic image.")
    p.add_argument("--question", default=None, help="Question about the image. Default: the built-in one.")
    for shared in (GlimpseOverrides, GenerationArguments, DtypeArguments):
        add_options(p, shared)
    add_options(p, PromptArguments, ("max_pixels",))
    p.add_argument("--out", default="outputs/visualize.png", help="Where to write the PNG.")
    p.set_defaults(run=_run_visualize)


def _run_visualize(args) -> int:
    import torch

    from .models import GlimpseConfig, add_glimpse, check_glimpse_checkpoint, glimpse_module, load_glimpse
    from .models.loading import load_model, load_processor
    from .models.visualize import render_keep_mask
    from .rl.config.names import GlimpseOverrides
    from .rl.data.synth.glimpse import make_sample

    if args.image is None:
        sample = make_sample(DEFAULT_QUESTION_SEED, "test", 0, image_size=448)
        image, question = sample.image, args.question or sample.question
    else:
        image = _read_image(args.image)
        question = args.question or "Describe the image."
    if args.glimpse:
        check_glimpse_checkpoint(args.glimpse)  # before the model loads
    base = args.model or _run_model(args.glimpse) or DEFAULT_MODEL
    processor = load_processor(base, max_pixels=args.max_pixels)
    model = load_model(base, dtype=args.dtype)
    if args.glimpse:
        load_glimpse(model, args.glimpse)
    else:
        print("note: no --glimpse given, so the VIP is untrained and the kept tokens are arbitrary.", file=sys.stderr)
        add_glimpse(model, GlimpseConfig())
    glimpse = glimpse_module(model)
    glimpse.config = config = GlimpseOverrides(args.threshold, args.max_keep_ratio).apply(glimpse.config)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=args.max_new_tokens, do_sample=False, return_dict_in_generate=True
        )
    answer = processor.batch_decode(out.sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    result = out.cache.glimpse_state.result
    stats = result.stats()[0]
    keep = result.image_values(result.keep_mask, 0)[0]
    caption = (
        f"Q: {question}\nA: {answer.strip()}\nkept {stats['kept_tokens']} of {stats['visual_tokens']} visual tokens "
        f"({100 * stats['keep_ratio']:.1f}%), layer K={config.layer}"
    )
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    render_keep_mask(image, keep, caption).save(out_path)
    print(json.dumps({"question": question, "answer": answer, **stats, "png": str(out_path)}, indent=2))
    return 0


def _run_model(glimpse: str | None) -> str | None:
    """The base model a glimpse was trained on, from its run's card (None without a card)."""
    from .rl.runs.card import read_run_card

    card = read_run_card(glimpse) if glimpse else None
    return card.get("model_name_or_path") if card else None


def _read_image(path: str):
    """The image file at `path` as RGB; a folder or an unreadable file is an error saying so."""
    from PIL import Image

    if Path(path).is_dir():
        raise ValueError(f"--image {path} is a folder; give one image file.")
    if not Path(path).is_file():
        raise FileNotFoundError(f"--image {path} does not exist.")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # PIL raises several types for broken files; all mean "unusable"
        raise ValueError(
            f"--image {path} cannot be read as an image ({type(err).__name__}: {err}); give an intact PNG or JPEG."
        ) from None


def _add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="Export a stage-2 run (LoRA adapter or full weights + glimpse + processor) for inference.",
        description="Write RUN_DIR (a run folder or one of its checkpoint-N folders) to a clean OUT folder: by "
        "default the LoRA adapter + glimpse weights + processor; with --merge one standard checkpoint (adapter merged "
        "into the base) + glimpse + processor, which from_pretrained loads. Full-fine-tuning runs export as a "
        "standard checkpoint. Load either form with glimpserl.rl.load_exported(OUT).",
    )
    p.add_argument("run_dir", help="Run folder with the adapter (or model.safetensors) and glimpse.safetensors.")
    p.add_argument("--out", required=True, help="Folder to write; must be new or empty unless --overwrite.")
    p.add_argument("--merge", action="store_true", help="Merge the LoRA adapter into the base and save one model.")
    p.add_argument("--base", default=None, help="Base model (folder, hub id or builtin:...). Default: adapter config.")
    p.add_argument(
        "--dtype", default=None, choices=list(DTYPES), help="Saved dtype (merged/full). Default: as stored."
    )
    p.add_argument("--overwrite", action="store_true", help="Replace a non-empty --out folder.")
    p.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from .rl.runs.export import MANIFEST, export_run

    out = export_run(
        args.run_dir, args.out, merge=args.merge, base=args.base, dtype=args.dtype, overwrite=args.overwrite
    )
    manifest = json.loads((out / MANIFEST).read_text())
    print(json.dumps({**manifest, "out": str(out), "files": sorted(p.name for p in out.iterdir())}, indent=2))
    return 0


SYNTH_HELP = "Write a synthetic VQA set (images + train/[val/]test JSONL with answers and boxes)."
SYNTH_DESCRIPTION = (
    "Images whose answer lives in a small region, with the question, the exact answer and the region's box "
    "(train.jsonl, [val.jsonl,] test.jsonl, images/, dataset.json). Task glimpse: a coloured shape, a digit or a word "
    "among distractors; task shapes: the one coloured object among grey ones, its colour or shape asked; task "
    "places: a 3 x 3 board of equally salient objects, the question naming one by its place (numbered 1-9) or asking "
    "the colour most of them have. Deterministic by seed."
)


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give `parser` (new, or the `glimpserl data synth` sub-command's) the synth description and options."""
    parser.description = SYNTH_DESCRIPTION
    parser.add_argument("--out", required=True, type=Path, help="Output folder (created; must be empty).")
    parser.add_argument("--n-train", type=int, default=200, help="Number of training samples (default: 200).")
    parser.add_argument("--n-val", type=int, default=0, help="Number of validation samples (default: 0, none).")
    parser.add_argument("--n-test", type=int, default=50, help="Number of test samples (default: 50).")
    parser.add_argument(
        "--task",
        default="glimpse",
        choices=SYNTH_TASKS,
        help="glimpse: one target among distractors (colour / digit / word questions); shapes: the one coloured "
        "object among grey ones (builtin:mini-qwen2_5_vl's task); places: the question chooses the object by its "
        "place, or asks about all of them (builtin:mini-qwen3_vl's task; images 288 px). Default: glimpse.",
    )
    parser.add_argument(
        "--image-size", default="448", help="Image size: 448 for square or WIDTHxHEIGHT like 640x480 (default: 448)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed; the same seed writes byte-identical files.")
    parser.add_argument(
        "--curriculum",
        type=int,
        default=0,
        help="shapes and places tasks: the first N train rows are easier (shapes: fewer objects, rising from one; "
        "places: fewer filled places, rising from two) (default: 0, off).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier synth set in --out.")
    return parser


def run_synth(args: argparse.Namespace) -> int:
    """Write the set `args` (from `add_synth_arguments`) describe and print where it went."""
    from .rl.data.synth import parse_image_size, write_synth

    size = parse_image_size(args.image_size)
    out = write_synth(
        args.out, args.n_train, args.n_test, size, args.seed, args.overwrite, args.task, args.n_val, args.curriculum
    )
    counts = f"{args.n_train} train + {args.n_val} val + {args.n_test} test" if args.n_val else None
    counts = counts or f"{args.n_train} train + {args.n_test} test"
    print(f"wrote {counts} {args.task} samples ({size[0]}x{size[1]}) to {out}")
    return 0


def synth_main(argv: list[str] | None = None) -> int:
    """`glimpserl data synth` as a function of its argv: bad input exits with argparse's usage error (code 2)."""
    parser = add_synth_arguments(argparse.ArgumentParser(prog="glimpserl data synth"))
    args = parser.parse_args(argv)
    try:
        return run_synth(args)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))


def _add_data(subparsers) -> None:
    p = subparsers.add_parser("data", help="Build datasets (the built-in synthetic VQA sets).")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    synth = data_sub.add_parser("synth", help=SYNTH_HELP)
    add_synth_arguments(synth)
    synth.set_defaults(run=run_synth)


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="Train from a recipe YAML: stage sft (fine-tune the VLM), vip (stage 1: VIP distillation) or grpo "
        "(stage 2: GlimpsePrune+).",
        description="Run a recipe: `glimpserl train RECIPE.yaml [--key value ...]`. Every recipe key can be "
        "overridden on the command line; unknown keys are errors. `--help-keys` (anywhere) lists the keys of the "
        "recipe's stage with their help, or of every stage without a recipe. Resume with --resume_from_checkpoint "
        "last.",
    )
    p.add_argument("recipe", nargs="?", help="Recipe YAML, e.g. recipes/tiny/vip.yaml.")
    p.add_argument("--help-keys", action="store_true", help="List every key the recipe's stage accepts.")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs overriding the recipe.")
    p.set_defaults(run=_run_train)


def _run_train(args) -> int:
    from .rl import train

    if args.help_keys or "--help-keys" in args.overrides:
        _print_keys(args.recipe)
        return 0
    if args.recipe is None:
        raise ValueError("give a recipe: glimpserl train RECIPE.yaml [--key value ...] (e.g. recipes/tiny/vip.yaml)")
    return train.main([args.recipe, *args.overrides])


def _print_keys(recipe: str | None) -> None:
    """The keys of the recipe's stage, or of every stage, with their types, defaults and help."""
    from trl import TrlParser

    from .rl.config.recipe import STAGES, read_recipe, stage_classes

    stages = [read_recipe(recipe).get("stage", "vip")] if recipe else list(STAGES)
    for stage in stages:
        usage = f"glimpserl train {recipe or 'RECIPE.yaml'} [--key value ...]   (stage: {stage})"
        TrlParser(stage_classes(stage), prog=usage, usage=usage).print_help()
        print()


def _add_eval(subparsers) -> None:
    from .rl.eval.settings import add_eval_arguments

    p = subparsers.add_parser(
        "eval",
        help="Compare the glimpse with training-free pruners on a VQA set (metric, keep ratio, KV length, time).",
        description="Batched greedy generation with each pruner over the same rows: the metric (a reward from "
        "glimpserl.rewards), keep ratio, kept tokens, KV length after prefill, prefill and decode time, and box "
        "recall. Prints a markdown table and writes JSON with --out. With no arguments it runs the baselines on the "
        "built-in tiny model and the built-in synthetic test set.",
    )
    add_eval_arguments(p)
    p.set_defaults(run=_run_eval)


def _run_eval(args) -> int:
    from .rl.eval.compare import run_eval
    from .rl.eval.settings import EvalSettings

    report = run_eval(EvalSettings.from_args(args))
    print(report["table"])
    if args.out:
        print(f"results: {args.out}", file=sys.stderr)
    return 0


def _add_bench(subparsers) -> None:
    from .benchmarks.arguments import add_bench_arguments

    p = subparsers.add_parser(
        "bench",
        help="Prefill/decode time, KV length and peak memory of each pruner vs unpruned, as the image grows.",
        description="On a random Qwen2.5-VL-shaped model, for each visual-token count: the unpruned model and each "
        "pruner (the glimpse, training-free baselines) keeping the same fraction of visual tokens, measured side by "
        "side; each cost as a ratio to unpruned next to the analytic prefill FLOPs bound. Writes scaling.json, "
        "scaling.md and scaling.png into --out-dir and prints the table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_bench_arguments(p)
    p.set_defaults(run=_run_bench)


def _run_bench(args) -> int:
    from .benchmarks.scaling import markdown_table, run, write_outputs

    # Written after every size, so a stopped sweep keeps its finished sizes.
    results = run(args, on_size=lambda partial: write_outputs(partial, args.out_dir, png=not args.no_plot))
    print(markdown_table(results))
    print(f"results: {args.out_dir}/scaling.{{json,md,png}}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glimpserl",
        description="glimpserl: train vision-language models that glimpse before they read (dynamic visual-token "
        "pruning with a glimpse token and a VIP, on TRL).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(subparsers)
    _add_visualize(subparsers)
    _add_data(subparsers)
    _add_export(subparsers)
    _add_eval(subparsers)
    _add_bench(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        # Bad input (a missing file, a recipe typo, a bad row): say what is wrong, not where in our code.
        if os.environ.get("GLIMPSERL_DEBUG"):
            raise
        print(f"glimpserl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
