"""How the cost of visual-token pruning scales with the number of visual tokens: the glimpse and training-free
pruners against the unpruned model, side by side, at several image sizes.

For each visual-token count n, the image is rows x cols visual tokens (28 px each for Qwen2.5-VL, 32 for Qwen3-VL) with
rows * cols closest to n (`measure.closest_grid`); LLaVA's fixed-resolution tower sees a square image (its published
shape only 24 x 24: more tokens per prompt come from --images). One random model of the family (the --family / --shape
flags) runs every arm on the same weights: "unpruned" (the stock model) and each pruner, all keeping the same
int(keep_ratio * n) visual tokens after layer K: "glimpse" (glimpse token + VIP, threshold 0 and a top-k cap) and the
training-free selectors of glimpserl.models.baselines (the same pruned forward with `glimpse_pruner=`). Per arm, with
its ratio to unpruned: prefill time, decode time per token, KV length after prefill (checked: text + kept), peak memory
of one generate; beside them the analytic prefill FLOPs ratio (benchmarks/flops.py; the glimpse arm counts the glimpse
token and the VIP, the training-free arms their own selection work). Timing (medians, arms interleaved) and memory (CUDA
allocator, or the torch profiler in a fresh process per arm on a CPU) are benchmarks.prefill_decode's.

Writes scaling.json, scaling.md (the table) and scaling.png (one panel per cost) into --out-dir; prints the table.

    glimpserl bench --visual-tokens 1024,2048,4096,8192 --keep-ratio 0.07 --out-dir outputs/bench
    glimpserl bench --hidden 64 --layers 4 --visual-tokens 64,144 --new-tokens 2 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from glimpserl.benchmarks import flops
from glimpserl.benchmarks.arguments import add_bench_arguments, shape_values
from glimpserl.benchmarks.families import family_of, shapes_from_model
from glimpserl.benchmarks.measure import (
    ModelSpec,
    build_arm,
    build_inputs,
    closest_grid,
    peak_memory,
    peak_memory_subprocess,
    time_prefill,
)
from glimpserl.benchmarks.prefill_decode import TIME_KEYS, check_spec, measure_times, spec_from_args
from glimpserl.benchmarks.report import model_name
from glimpserl.models.baselines import TrainingFreePruner, usable_selectors

REFERENCE = "unpruned"
PANELS = (  # (JSON key, panel title, scale to the plotted unit)
    ("prefill_s", "prefill time (s)", 1.0),
    ("decode_s_per_token", "decode time per token (ms)", 1e3),
    ("kv_length", "KV length after prefill (tokens)", 1.0),
    ("peak_memory", "peak memory of generate (MB above weights + inputs)", 2**-20),
)


def valid_pruners(family: str = "qwen2_5_vl") -> tuple[str, ...]:
    """The glimpse and the training-free selectors `family` feeds whose selection work the FLOP counter counts."""
    from glimpserl.models.adapter import adapter_for_type

    usable = usable_selectors(adapter_for_type(family).pruner_signals)
    return ("glimpse", *(name for name in usable if name in flops.COUNTED_SELECTORS))


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}.") from None
    if not values or min(values) < 1:
        raise ValueError(f"{flag} needs at least one count, all >= 1; got {text!r}.")
    return sorted(set(values))


def check_args(args: argparse.Namespace) -> tuple[list[int], list[str]]:
    """(visual-token counts ascending, pruner names in the given order); bad values raise ValueError."""
    sizes = _int_list(args.visual_tokens, "--visual-tokens")
    pruners = list(dict.fromkeys(name.strip() for name in args.pruners.split(",") if name.strip()))
    family = shape_values(args)["family"]  # a flag beside --shape that it sets is an error
    valid = valid_pruners(family)
    unknown = [name for name in pruners if name not in valid]
    if unknown or not pruners:
        raise ValueError(
            f"--pruners: unknown {unknown or 'empty list'}; valid for {family}: {', '.join(valid)} "
            f"({REFERENCE} is always measured)."
        )
    if not 0.0 < args.keep_ratio <= 1.0:
        raise ValueError(f"--keep-ratio must be in (0, 1] (a fraction of the visual tokens), got {args.keep_ratio}.")
    if args.new_tokens < 2 or args.repeats < 1:
        raise ValueError(f"--new-tokens must be >= 2 and --repeats >= 1, got {args.new_tokens} and {args.repeats}.")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available.")
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}.")
    for n in sizes:
        check_spec(size_spec(spec_from_args(args), n))
    return sizes, pruners


def size_spec(base: ModelSpec, visual_tokens: int) -> ModelSpec:
    """The spec of one size: the closest grid in a dynamic-resolution family, a square image otherwise."""
    grid = closest_grid(visual_tokens) if family_of(base.family).dynamic_resolution else None
    return dataclasses.replace(base, visual_tokens=visual_tokens, grid=grid)


def arm_kwargs(pruners: list[str], kept: int) -> dict[str, dict]:
    """Extra forward/generate keywords per arm. Training-free pruners get the glimpse's exact budget (int(r * n);
    their keep_ratio would round instead), so every pruned arm keeps the same tokens count."""
    return {
        name: {} if name == "glimpse" else {"glimpse_pruner": TrainingFreePruner.build(name, budget=kept)}
        for name in pruners
    }


def token_counts(models: dict, inputs: dict, kwargs: dict, kept: int) -> dict:
    """Prompt / visual / text tokens and each arm's KV length after prefill, checked: text + kept when pruned."""
    prompt = inputs["input_ids"].shape[1]
    visual = int((inputs["input_ids"] == models[REFERENCE].config.image_token_id).sum())
    counts = {"prompt": prompt, "visual": visual, "text": prompt - visual, "kept": kept, "kv_length": {}}
    for arm, model in models.items():
        _, kv, result = time_prefill(model, {**inputs, **kwargs.get(arm, {})})
        expected = prompt if arm == REFERENCE else counts["text"] + kept
        if kv != expected or (result is not None and int(result.num_kept[0]) != kept):
            raise AssertionError(f"{arm}: KV length after prefill {kv}, expected {expected}; for {counts}.")
        counts["kv_length"][arm] = kv
    return counts


def analytic_flops(pruned_model, inputs: dict, counts: dict, layer: int, pruners: list[str]) -> dict:
    """Per arm the analytic prefill FLOPs breakdown; docs/method.md's decoder-only bound under "simple_bound"."""
    text, vision, vip = shapes_from_model(pruned_model)
    grid = family_of(pruned_model.config.model_type).image_grids(pruned_model.config, inputs)
    per_arm = {REFERENCE: flops.prefill_flops(text, vision, vip, grid, counts["text"]).to_dict()}
    for name in pruners:
        per_image = [counts["kept"] // len(grid)] * len(grid)  # every image has the same size and budget
        count = flops.prefill_flops(text, vision, vip, grid, counts["text"], per_image, layer, pruner=name)
        per_arm[name] = count.to_dict()
    simple = flops.simple_bound(layer, text.layers, counts["text"] + counts["kept"], counts["prompt"])
    return {"arms": per_arm, "simple_bound": simple}


def measure_memory(spec: ModelSpec, models: dict, inputs: dict, kwargs: dict, new_tokens: int, threads: int) -> dict:
    if inputs["input_ids"].device.type == "cuda":
        return {
            arm: peak_memory(model, {**inputs, **kwargs.get(arm, {})}, new_tokens) for arm, model in models.items()
        }
    return {
        arm: peak_memory_subprocess(
            spec, REFERENCE if arm == REFERENCE else "pruned", new_tokens, threads, kwargs.get(arm, {})
        )
        for arm in models
    }


def _arm_result(times: dict, counts: dict, memory: dict | None, analytic: dict, arm: str) -> dict:
    result = {key: {"median": statistics.median(v), "min": min(v), "all": v} for key, v in times[arm].items()}
    result.update(kv_length=counts["kv_length"][arm], peak_memory=memory and memory[arm])
    result["flops"] = analytic["arms"][arm]
    return result


def _ratios(arm: dict, reference: dict) -> dict:
    ratios = {key: arm[key]["median"] / reference[key]["median"] for key in TIME_KEYS}
    ratios["kv_length"] = arm["kv_length"] / reference["kv_length"]
    ratios["flops"] = arm["flops"]["total"] / reference["flops"]["total"]
    ratios["prefill_over_flops"] = ratios["prefill_s"] / ratios["flops"]  # 1.0: prefill time follows the FLOPs
    if arm["peak_memory"]:
        ratios["peak_memory"] = arm["peak_memory"]["delta"] / max(reference["peak_memory"]["delta"], 1)
    return ratios


def measure_size(args: argparse.Namespace, spec: ModelSpec, pruners: list[str], device: torch.device) -> dict:
    """Every arm at one image size: times, KV length, memory, analytic FLOPs and the ratios to unpruned."""
    processor, inputs = build_inputs(spec, device)
    pruned = build_arm(spec, processor, device, "pruned")
    models = {REFERENCE: build_arm(spec, processor, device, REFERENCE, pruned=pruned)}
    models.update({name: pruned for name in pruners})
    visual = int((inputs["input_ids"] == pruned.config.image_token_id).sum())
    # GlimpseConfig's cap, per image: max(min_keep, int(max_keep_ratio * n)); every image has the same n here.
    kept_per_image = max(1, int(spec.keep_ratio * visual // spec.images))
    kept = kept_per_image * spec.images
    kwargs = arm_kwargs(pruners, kept_per_image)
    counts = token_counts(models, inputs, kwargs, kept)
    times = measure_times(models, inputs, args.new_tokens, args.repeats, kwargs)
    memory = None if args.no_memory else measure_memory(spec, models, inputs, kwargs, args.new_tokens, args.threads)
    analytic = analytic_flops(pruned, inputs, counts, spec.layer_k, pruners)
    arms = {arm: _arm_result(times, counts, memory, analytic, arm) for arm in models}
    for result in arms.values():
        result["ratios"] = _ratios(result, arms[REFERENCE])
    tokens = {k: v for k, v in counts.items() if k != "kv_length"}
    grid = list(family_of(spec.family).grid(spec))
    return {
        "requested": spec.visual_tokens, "grid": grid, "images": spec.images, **tokens, **analytic, "arms": arms,
    }  # fmt: skip


def run(args: argparse.Namespace, on_size: Callable[[dict], None] | None = None) -> dict:
    """Every size in turn; on_size(results so far) after each (e.g. to write them, so a long sweep keeps its
    finished sizes if it is stopped)."""
    sizes, pruners = check_args(args)
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    torch.set_num_threads(args.threads)
    base = spec_from_args(args, visual_tokens=sizes[0])
    results = {
        "model": {**dataclasses.asdict(base), "visual_tokens": sizes, "grid": None},
        "device": device.type,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "keep_ratio": args.keep_ratio,
        "arms": [REFERENCE, *pruners],
        "sizes": [],
    }
    for n in sizes:
        spec = size_spec(base, n)
        rows, cols = family_of(spec.family).grid(spec)
        print(f"bench: {n} visual tokens, grid {rows}x{cols}", file=sys.stderr, flush=True)
        results["sizes"].append(measure_size(args, spec, pruners, device))
        gc.collect()
        if on_size is not None:
            on_size(results)
    return results


def _cell(value: float, ratio: float, fmt: str) -> str:
    return f"{value:{fmt}} ({ratio:.3f})"


def _fastest(arm: dict, reference: dict, key: str) -> float:
    """Ratio of the fastest repeats: the least disturbed by other jobs sharing the cores."""
    return arm[key]["min"] / reference[key]["min"]


def _row(size: dict, arm: str) -> str:
    r, ref = size["arms"][arm], size["arms"][REFERENCE]
    q = r["ratios"]
    memory = _cell(r["peak_memory"]["delta"] / 2**20, q["peak_memory"], ".1f") if r["peak_memory"] else "n/a"
    cells = [
        str(size["visual"]),
        arm,
        str(size["visual"] if arm == REFERENCE else size["kept"]),
        _cell(r["kv_length"], q["kv_length"], "d"),
        _cell(r["prefill_s"]["median"], q["prefill_s"], ".3f"),
        f"{_fastest(r, ref, 'prefill_s'):.3f}",
        f"{q['flops']:.3f}",
        _cell(1e3 * r["decode_s_per_token"]["median"], q["decode_s_per_token"], ".2f"),
        f"{_fastest(r, ref, 'decode_s_per_token'):.3f}",
        memory,
    ]
    return "| " + " | ".join(cells) + " |"


def markdown_table(results: dict) -> str:
    """The table: one row per (size, arm), each cost with its ratio to unpruned in parentheses."""
    m = results["model"]
    lines = [
        f"Model: {model_name(m)}: text hidden {m['hidden']}, {m['layers']} layers, {m['heads']} heads / "
        f"{m['kv_heads']} KV heads, MLP {m['intermediate']}; vision {m['vision_layers']} blocks x "
        f"{m['vision_hidden']}; pruning after layer K = {m['layer_k']}; {m.get('dtype', 'float32')}, "
        f"{m.get('attn', 'sdpa')} attention; {m.get('images', 1)} image(s) per prompt. Device {results['device']}, "
        f"{results['threads']} threads; medians of {results['repeats']} interleaved repeats (GPU: CUDA events); decode "
        f"over {results['new_tokens']} new tokens; every pruner keeps int({results['keep_ratio']} * visual) tokens "
        "per image.",
        "",
        "| visual tokens | arm | kept | KV length | prefill s | prefill ratio, fastest | FLOPs bound "
        "| decode ms/token | decode ratio, fastest | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(size, arm) for size in results["sizes"] for arm in size["arms"]]
    simple = ", ".join(f"{s['visual']}: {s['simple_bound']:.3f}" for s in results["sizes"])
    over = "; ".join(
        f"{arm} "
        + ", ".join(f"{s['visual']}: {s['arms'][arm]['ratios']['prefill_over_flops']:.3f}" for s in results["sizes"])
        for arm in results["arms"][1:]
    )
    lines += [
        "",
        'Ratios to unpruned in parentheses (of the medians); "fastest": ratio of each arm\'s fastest repeat, the '
        "least disturbed by other jobs sharing the cores (scaling.json keeps every repeat, wall and CPU time). "
        "FLOPs bound = analytic prefill FLOPs of the arm / unpruned (benchmarks/flops.py: vision tower, decoder, "
        "LM head; glimpse: + glimpse token + VIP; gprune/divprune: + feature similarities (and propagation); cdpruner: + "
        "similarities, instruction relevance and its greedy search; fastv: "
        "+ last-token query at K; random: nothing extra). Peak MB: tensor memory of one generate above weights + "
        "inputs.",
        f"docs/method.md's decoder-only bound (K+1)/L + (1-(K+1)/L)(kept+text)/all per size: {simple}.",
        f"Prefill ratio / FLOPs bound per arm and size (1.0: the time saved follows the FLOPs saved): {over}.",
    ]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """One panel per cost against the visual tokens (log-log), one line per arm: medians, with the range of the
    repeats shaded for times; on the prefill panel, the glimpse's analytic bound (unpruned median x FLOPs ratio)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg renders the PNG
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(11, 8.5), layout="constrained")
    x = [size["visual"] for size in results["sizes"]]
    markers = "osD^vP*X"
    for ax, (key, title, scale) in zip(fig.subplots(2, 2).flat, PANELS):
        for i, arm in enumerate(results["arms"]):
            runs = [size["arms"][arm] for size in results["sizes"]]
            values = [_plotted(r[key], key) for r in runs]
            if None in values:  # peak memory with --no-memory
                ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
                continue
            style = "-" if arm == REFERENCE else "--" if arm == "glimpse" else ":"
            marker = markers[i % len(markers)]
            (line,) = ax.plot(x, [scale * v for v in values], style, marker=marker, label=arm, alpha=0.85)
            if key in TIME_KEYS:
                low, high = [scale * r[key]["min"] for r in runs], [scale * max(r[key]["all"]) for r in runs]
                ax.fill_between(x, low, high, color=line.get_color(), alpha=0.12, linewidth=0)
        if key == "prefill_s" and "glimpse" in results["arms"]:
            arms = [size["arms"] for size in results["sizes"]]
            bound = [a[REFERENCE]["prefill_s"]["median"] * a["glimpse"]["ratios"]["flops"] for a in arms]
            ax.plot(x, bound, color="grey", linewidth=3, alpha=0.35, label="glimpse FLOPs bound")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x, [str(v) for v in x])
        ax.set_xticks([], minor=True)
        ax.set_title(title)
        ax.set_xlabel("visual tokens")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels))
    fig.suptitle(
        f"Pruning cost vs visual tokens (keep ratio {results['keep_ratio']}, device {results['device']}; "
        f"medians of {results['repeats']}, shaded: range of the repeats)"
    )
    fig.savefig(path, dpi=110)


def _plotted(value, key: str) -> float | None:
    if key == "kv_length":
        return value
    if key == "peak_memory":
        return value and value["delta"]
    return value["median"]


def write_outputs(results: dict, out_dir: str | Path, png: bool = True) -> dict[str, Path]:
    """scaling.json and scaling.md, and scaling.png unless `png` is False (no matplotlib needed then)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "scaling.json", "markdown": out / "scaling.md"}
    paths["json"].write_text(json.dumps(results, indent=2))
    paths["markdown"].write_text(markdown_table(results) + "\n")
    if png:
        paths["png"] = out / "scaling.png"
        plot(results, paths["png"])
    return paths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m glimpserl.benchmarks.scaling",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    results = run(args, on_size=lambda partial: write_outputs(partial, args.out_dir, png=not args.no_plot))
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    main()
