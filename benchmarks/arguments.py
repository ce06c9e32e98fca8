"""Command-line flags of the benchmarks, in a module that imports neither torch nor transformers (the `glimpserl`
parser builds every subcommand's flags at start-up)."""

from __future__ import annotations

import argparse
import os

from glimpserl.benchmarks.shapes import SHAPES

FAMILIES = ("qwen2_5_vl", "qwen3_vl", "llava")
"""The model types the benchmarks build (benchmarks/families.py has one entry per name)."""

BENCH_PRUNERS = ("glimpse", "cdpruner", "divprune", "fastv", "gprune", "random")
"""What `glimpserl bench --pruners` accepts: the glimpse and the training-free selectors every benchmarked family can
feed and the FLOP counter counts (benchmarks.scaling.valid_pruners derives the list per family from the selector
registry; a test keeps them equal)."""


CPU_SHAPE = dict(
    hidden=512, layers=12, heads=8, kv_heads=2, intermediate=None, vision_hidden=128, vision_layers=8, vision_heads=2,
    vision_intermediate=None, vocab=None, tied=False,
)  # fmt: skip
"""The shape without --shape: a model of the --family sized for a CPU (the MLP widths follow the rules in the flags'
help; the vocabulary is the benchmark's own default)."""
SHAPE_FLAGS = tuple(key for key in CPU_SHAPE if key != "tied")
"""The flags a --shape sets; giving one of them beside --shape is an error (--layer-k is not one: K can be swept)."""
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION = ("sdpa", "eager", "flash_attention_2")


def add_model_arguments(p: argparse.ArgumentParser, vocab: int | None = None) -> None:
    """The model-shape flags (read by `prefill_decode.spec_from_args`), dtype, attention, seed, threads and device.
    `vocab`: this benchmark's default vocabulary (None: the tiny tokenizer's ~1.3k)."""
    p.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default=None,
        help="A published architecture configuration (benchmarks/shapes.py), built with random weights on the "
        "device: sets --family and every shape flag below but --layer-k (default: the method's K for it). Default: "
        "a CPU-sized shape of --family (hidden 512, 12 layers).",
    )
    p.add_argument(
        "--family",
        choices=FAMILIES,
        default=None,
        help="Model type of the CPU-sized shape (default qwen2_5_vl); a --shape sets its own. llava's visual tokens "
        "per image follow its fixed image size (a square of at least --visual-tokens, exactly 576 for llava_1_5_7b).",
    )
    p.add_argument("--hidden", type=int, default=None, help="Text decoder width (CPU shape: 512).")
    p.add_argument("--layers", type=int, default=None, help="Text decoder layers L (CPU shape: 12).")
    p.add_argument(
        "--heads", type=int, default=None, help="Attention heads, head_dim = hidden / heads (CPU shape: 8)."
    )
    p.add_argument("--kv-heads", type=int, default=None, help="Key/value heads, grouped-query attention (CPU: 2).")
    p.add_argument("--intermediate", type=int, default=None, help="MLP width. Default: 5.375 * hidden (Qwen2.5-3B).")
    p.add_argument(
        "--layer-k",
        type=int,
        default=None,
        help="Glimpse layer K (0-based). Default: the shape's K, else round(0.65 * L), at most L - 2.",
    )
    p.add_argument("--vision-hidden", type=int, default=None, help="Vision tower width (CPU shape: 128).")
    p.add_argument("--vision-layers", type=int, default=None, help="Vision blocks, full attention every 8th (CPU: 8).")
    p.add_argument("--vision-heads", type=int, default=None, help="Vision tower attention heads (CPU shape: 2).")
    p.add_argument("--vision-intermediate", type=int, default=None, help="Vision MLP width. Default: 2.5 * width.")
    vocab_help = f"Text vocabulary. Default: {vocab}" if vocab else "Text vocabulary. Default: the tiny tokenizer's"
    p.add_argument("--vocab", type=int, default=None, help=f"{vocab_help} (a --shape sets its own).")
    p.set_defaults(default_vocab=vocab)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="Weights and activations (GPU: bfloat16).")
    p.add_argument(
        "--attn",
        choices=ATTENTION,
        default="sdpa",
        help="Decoder attention kernel (flash_attention_2 needs flash-attn).",
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the random weights and image.")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads.")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if available.")


def shape_values(args: argparse.Namespace) -> dict:
    """The shape of the parsed flags: the --shape preset's, else the CPU shape with the given flags on top. A flag
    beside --shape that it would override is an error naming it."""
    given = {key: getattr(args, key) for key in SHAPE_FLAGS if getattr(args, key, None) is not None}
    family = getattr(args, "family", None)
    if args.shape is None:
        values = {**CPU_SHAPE, "vocab": args.default_vocab, **given}
        return {**values, "layer_k": args.layer_k, "family": family or FAMILIES[0]}
    preset = SHAPES[args.shape]
    if family is not None and family != preset.family:
        raise ValueError(f"--shape {args.shape} is a {preset.family} model; drop --family {family} or --shape.")
    if given:
        flags = ", ".join("--" + key.replace("_", "-") for key in given)
        raise ValueError(f"--shape {args.shape} sets {flags} itself; drop {flags} or --shape.")
    values = {key: getattr(preset, key) for key in (*SHAPE_FLAGS, "tied", "family")}
    return {**values, "layer_k": preset.layer_k if args.layer_k is None else args.layer_k}


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """`glimpserl bench` / benchmarks.scaling; the values are checked by scaling.check_args."""
    p.add_argument(
        "--visual-tokens", default="1024,2048,4096,8192", help="Comma-separated visual-token counts (one image each)."
    )
    p.add_argument("--keep-ratio", type=float, default=0.07, help="Fraction of visual tokens every pruner keeps.")
    p.add_argument(
        "--pruners",
        default="glimpse,gprune,fastv,random",
        help=f"Comma-separated arms beside the unpruned reference; valid: {', '.join(BENCH_PRUNERS)}.",
    )
    add_model_arguments(p)
    p.add_argument("--images", type=int, default=1, help="Images per prompt, each of the --visual-tokens size.")
    p.add_argument("--new-tokens", type=int, default=16, help="Tokens generated to time decoding (>= 2).")
    p.add_argument("--repeats", type=int, default=3, help="Measured repeats per arm (the median is reported).")
    p.add_argument("--no-memory", action="store_true", help="Skip the peak-memory measurement.")
    p.add_argument("--out-dir", default="outputs/bench", help="Folder for scaling.json, scaling.md, scaling.png.")
    p.add_argument("--no-plot", action="store_true", help="Skip scaling.png (no matplotlib needed).")
