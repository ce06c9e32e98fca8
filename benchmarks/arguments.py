"""Command-line flags of the benchmarks, in a module that imports neither torch nor transformers (the `glimpserl`
parser builds every subcommand's flags at start-up)."""

from __future__ import annotations

import argparse
import os

BENCH_PRUNERS = ("glimpse", "cdpruner", "divprune", "fastv", "gprune", "random")
"""What `glimpserl bench --pruners` accepts: the glimpse and the training-free selectors the Qwen path can feed
(benchmarks.scaling.valid_pruners derives the same list from the selector registry; a test keeps them equal)."""


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The model-shape flags (read by `prefill_decode.spec_from_args`), the seed, threads and device."""
    p.add_argument("--hidden", type=int, default=512, help="Text decoder width.")
    p.add_argument("--layers", type=int, default=12, help="Text decoder layers L.")
    p.add_argument("--heads", type=int, default=8, help="Attention heads (head_dim = hidden / heads).")
    p.add_argument("--kv-heads", type=int, default=2, help="Key/value heads (grouped-query attention).")
    p.add_argument("--intermediate", type=int, default=None, help="MLP width. Default: 5.375 * hidden (Qwen2.5-3B).")
    p.add_argument(
        "--layer-k", type=int, default=None, help="Glimpse layer K (0-based). Default: round(0.65 * L), at most L - 2."
    )
    p.add_argument("--vision-hidden", type=int, default=128, help="Vision tower width.")
    p.add_argument("--vision-layers", type=int, default=8, help="Vision tower blocks (full attention every 8th).")
    p.add_argument("--vision-heads", type=int, default=2, help="Vision tower attention heads.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random weights and image.")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch CPU threads.")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if available.")


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
    p.add_argument("--new-tokens", type=int, default=16, help="Tokens generated to time decoding (>= 2).")
    p.add_argument("--repeats", type=int, default=3, help="Measured repeats per arm (the median is reported).")
    p.add_argument("--no-memory", action="store_true", help="Skip the peak-memory measurement.")
    p.add_argument("--out-dir", default="outputs/bench", help="Folder for scaling.json, scaling.md, scaling.png.")
