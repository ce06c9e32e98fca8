"""Prefill and decode cost of glimpse pruning against the unpruned model, side by side, with the analytic bound.

One run builds a random model of the --family (default Qwen2.5-VL) or of a published --shape (default: text hidden
512, 12 layers, 8 heads / 2 KV heads, MLP 2752 = Qwen2.5-VL-3B's 5.4x; an 8-block vision tower of width 128), one
image of >= 2,048 visual tokens and a short question, and measures both arms on the same weights: "pruned" (glimpse
at layer K, keeping int(keep_ratio * n) visual tokens) and "unpruned" (the stock transformers model).

- prefill: one forward with use_cache=True and logits_to_keep=1, vision encoder included (median over --repeats,
  the arms interleaved and alternated, after one warm-up of each arm);
- decode: a greedy generate of --new-tokens tokens (min_new_tokens = max_new_tokens, so EOS cannot stop it); a
  stopping criterion timestamps every step, and the time per token is (last stamp - first stamp) / (new_tokens - 1):
  the decode forwards plus generate's per-step work, without the prefill;
- KV length after prefill (pruned must be text + kept visual tokens: checked);
- peak tensor memory of one generate (prefill + decode) above what was resident before it: CUDA
  max_memory_allocated, or on CPU the torch profiler's allocation events in a fresh subprocess per arm;
- the analytic prefill bound FLOPs(pruned) / FLOPs(unpruned) (see benchmarks/flops.py) and docs/method.md's simple one.

    python -m glimpserl.benchmarks.prefill_decode --json prefill_decode.json
    python -m glimpserl.benchmarks.prefill_decode --hidden 64 --layers 4 --visual-tokens 64 --repeats 1  # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics

import torch

from glimpserl.benchmarks import flops
from glimpserl.benchmarks.arguments import add_model_arguments, shape_values
from glimpserl.benchmarks.families import family_of, shapes_from_model
from glimpserl.benchmarks.measure import (
    ARMS,
    ModelSpec,
    build_arm,
    build_inputs,
    generate,
    peak_memory,
    peak_memory_subprocess,
    time_decode,
    time_prefill,
)
from glimpserl.benchmarks.report import markdown_report
from glimpserl.models.config import DEFAULT_LAYER_FRACTION


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m glimpserl.benchmarks.prefill_decode",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--visual-tokens", type=int, default=2048, help="At least this many visual tokens (square image).")
    p.add_argument("--images", type=int, default=1, help="Images in the prompt, each of --visual-tokens tokens.")
    p.add_argument("--keep-ratio", type=float, default=0.1, help="Fraction of visual tokens kept by the glimpse.")
    p.add_argument("--new-tokens", type=int, default=32, help="Tokens generated to time decoding (>= 2).")
    p.add_argument("--repeats", type=int, default=3, help="Measured repeats per arm (the median is reported).")
    p.add_argument("--no-memory", action="store_true", help="Skip the peak-memory measurement.")
    p.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available.")
    if args.new_tokens < 2 or args.repeats < 1 or not 0.0 < args.keep_ratio <= 1.0 or args.images < 1:
        p.error("--new-tokens must be >= 2, --repeats >= 1, --images >= 1 and --keep-ratio in (0, 1].")
    try:
        check_spec(spec_from_args(args))
    except ValueError as err:
        p.error(str(err))
    return args


def check_spec(spec: ModelSpec) -> ModelSpec:
    """The spec, if its family can build and feed it (e.g. LLaVA-1.5-7B's fixed 576 tokens); else ValueError."""
    family_of(spec.family).grid(spec)
    return spec


def spec_from_args(args: argparse.Namespace, visual_tokens: int | None = None) -> ModelSpec:
    """The ModelSpec of the parsed flags (a --shape preset, or the CPU shape with the given flags); visual_tokens
    overrides args.visual_tokens."""
    shape = shape_values(args)
    layers, hidden = shape["layers"], shape["hidden"]
    return ModelSpec(
        hidden=hidden,
        layers=layers,
        heads=shape["heads"],
        kv_heads=shape["kv_heads"],
        intermediate=shape["intermediate"] or round(5.375 * hidden / 64) * 64,
        layer_k=shape["layer_k"]
        if shape["layer_k"] is not None
        else min(round(DEFAULT_LAYER_FRACTION * layers), layers - 2),
        vision_hidden=shape["vision_hidden"],
        vision_layers=shape["vision_layers"],
        vision_heads=shape["vision_heads"],
        vision_intermediate=shape["vision_intermediate"] or shape["vision_hidden"] * 5 // 2,
        visual_tokens=args.visual_tokens if visual_tokens is None else visual_tokens,
        keep_ratio=args.keep_ratio,
        seed=args.seed,
        vocab=shape["vocab"],
        tied=shape["tied"],
        dtype=args.dtype,
        attn=args.attn,
        images=getattr(args, "images", 1),
        shape=args.shape,
        family=shape["family"],
    )


TIME_KEYS = ("prefill_s", "prefill_cpu_s", "decode_s_per_token", "decode_cpu_s_per_token")


def measure_times(models: dict, inputs: dict, new_tokens: int, repeats: int, model_kwargs: dict | None = None) -> dict:
    """Per arm (the keys of `models`): one list per TIME_KEYS entry (wall and CPU seconds), arms interleaved and
    alternated. model_kwargs: optional extra forward/generate keywords per arm (e.g. a `glimpse_pruner`)."""
    arms = tuple(models)
    arm_inputs = {arm: {**inputs, **(model_kwargs or {}).get(arm, {})} for arm in arms}
    for arm in arms:  # warm-up: first-call allocations and kernel selection
        time_prefill(models[arm], arm_inputs[arm])
        generate(models[arm], arm_inputs[arm], 2)
    times = {arm: {key: [] for key in TIME_KEYS} for arm in arms}
    for r in range(repeats):
        for arm in arms if r % 2 == 0 else arms[::-1]:
            gc.collect()
            prefill = time_prefill(models[arm], arm_inputs[arm])[0]
            gc.collect()
            decode = time_decode(models[arm], arm_inputs[arm], new_tokens)
            for key, value in zip(TIME_KEYS, (prefill.wall, prefill.cpu, decode.wall, decode.cpu)):
                times[arm][key].append(value)
    return times


def token_counts(models: dict, inputs: dict) -> dict:
    """Prompt, visual, text and kept token counts, and each arm's KV length after prefill (checked)."""
    _, kv_unpruned, _ = time_prefill(models["unpruned"], inputs)
    _, kv_pruned, result = time_prefill(models["pruned"], inputs)
    prompt = inputs["input_ids"].shape[1]
    visual, kept = int(result.num_visual[0]), int(result.num_kept[0])
    counts = {"prompt": prompt, "visual": visual, "text": prompt - visual, "kept": kept}
    counts["kept_per_image"] = [image["kept_tokens"] for image in result.stats()[0]["images"]]
    if kv_pruned != counts["text"] + kept or kv_unpruned != prompt:
        raise AssertionError(f"KV lengths after prefill: pruned {kv_pruned}, unpruned {kv_unpruned}; for {counts}.")
    return {**counts, "kv_length": {"unpruned": kv_unpruned, "pruned": kv_pruned}}


def analytic_flops(pruned_model, inputs: dict, counts: dict, layer: int) -> dict:
    text, vision, vip = shapes_from_model(pruned_model)
    grid = family_of(pruned_model.config.model_type).image_grids(pruned_model.config, inputs)
    unpruned = flops.prefill_flops(text, vision, vip, grid, counts["text"])
    kept = [int(k) for k in counts["kept_per_image"]]
    pruned = flops.prefill_flops(text, vision, vip, grid, counts["text"], kept=kept, layer=layer)
    simple = flops.simple_bound(layer, text.layers, counts["text"] + counts["kept"], counts["prompt"])
    return {
        "unpruned": unpruned.to_dict(),
        "pruned": pruned.to_dict(),
        "bound": pruned.total / unpruned.total,
        "simple_bound": simple,
    }


def measure_memory(spec: ModelSpec, models: dict, inputs: dict, new_tokens: int, threads: int) -> dict:
    if inputs["input_ids"].device.type == "cuda":
        return {arm: peak_memory(models[arm], inputs, new_tokens) for arm in ARMS}
    return {arm: peak_memory_subprocess(spec, arm, new_tokens, threads) for arm in ARMS}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    torch.set_num_threads(args.threads)
    spec = spec_from_args(args)
    processor, inputs = build_inputs(spec, device)
    pruned = build_arm(spec, processor, device, "pruned")
    models = {"unpruned": build_arm(spec, processor, device, "unpruned", pruned=pruned), "pruned": pruned}
    counts = token_counts(models, inputs)
    times = measure_times(models, inputs, args.new_tokens, args.repeats)
    memory = None if args.no_memory else measure_memory(spec, models, inputs, args.new_tokens, args.threads)
    analytic = analytic_flops(pruned, inputs, counts, spec.layer_k)
    results = {
        "model": dataclasses.asdict(spec),
        "device": device.type,
        "threads": args.threads,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "tokens": counts,
        "flops": analytic,
    }
    for arm in ARMS:
        arm_times = {k: {"median": statistics.median(v), "min": min(v), "all": v} for k, v in times[arm].items()}
        results[arm] = {**arm_times, "kv_length": counts["kv_length"][arm], "peak_memory": memory and memory[arm]}
    ratios = {key: results["pruned"][key]["median"] / results["unpruned"][key]["median"] for key in TIME_KEYS}
    ratios["kv_length"] = counts["kv_length"]["pruned"] / counts["kv_length"]["unpruned"]
    if memory:
        ratios["peak_memory"] = memory["pruned"]["delta"] / max(memory["unpruned"]["delta"], 1)
    results["ratios"] = ratios
    results["prefill_over_bound"] = ratios["prefill_s"] / analytic["bound"]
    results["prefill_cpu_over_bound"] = ratios["prefill_cpu_s"] / analytic["bound"]
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = run(args)
    print(markdown_report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
