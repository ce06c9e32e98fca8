"""The markdown report of `benchmarks.prefill_decode`: model shape, metric table, analytic breakdown and bounds."""

from __future__ import annotations


def _row(name: str, unpruned: float, pruned: float, fmt: str) -> str:
    ratio = pruned / unpruned if unpruned else float("nan")
    return f"| {name} | {unpruned:{fmt}} | {pruned:{fmt}} | {ratio:.3f} |"


def _fastest(unpruned: dict, pruned: dict, key: str) -> float:
    return pruned[key]["min"] / unpruned[key]["min"]


def model_name(model: dict) -> str:
    """ "the qwen2_5_vl_7b shape (random weights)" for a published shape, else e.g. "Qwen2.5-VL-shaped"."""
    from glimpserl.benchmarks.families import family_of

    shape = model.get("shape")
    label = family_of(model.get("family", "qwen2_5_vl")).label
    return f"the {shape} shape (random weights)" if shape else f"{label}-shaped"


def markdown_report(results: dict) -> str:
    """Markdown: model shape, the metric table, the analytic breakdown and the bounds."""
    m, t, f = results["model"], results["tokens"], results["flops"]
    u, p = results["unpruned"], results["pruned"]
    lines = [
        f"Model: {model_name(m)}, text hidden {m['hidden']}, {m['layers']} layers, {m['heads']} heads / "
        f"{m['kv_heads']} KV heads, MLP {m['intermediate']}; vision {m['vision_layers']} blocks x {m['vision_hidden']}; "
        f"glimpse K = {m['layer_k']}; {m.get('dtype', 'float32')}, {m.get('attn', 'sdpa')} attention. Device "
        f"{results['device']}, {results['threads']} threads; times are medians of {results['repeats']} (GPU: CUDA "
        "events; CPU: wall clock, and CPU time of the process).",
        f"Tokens: prompt {t['prompt']} = text {t['text']} + visual {t['visual']} ({m.get('images', 1)} image(s)); kept "
        f"{t['kept']} visual (keep ratio {m['keep_ratio']}).",
        "",
        "| metric | unpruned | pruned | ratio |",
        "|---|---|---|---|",
        _row("prefill time (s)", u["prefill_s"]["median"], p["prefill_s"]["median"], ".3f"),
        _row("prefill CPU time (s)", u["prefill_cpu_s"]["median"], p["prefill_cpu_s"]["median"], ".3f"),
        _row(
            f"decode time per token (ms, {results['new_tokens']} tokens)",
            1e3 * u["decode_s_per_token"]["median"],
            1e3 * p["decode_s_per_token"]["median"],
            ".2f",
        ),
        _row(
            "decode CPU time per token (ms)",
            1e3 * u["decode_cpu_s_per_token"]["median"],
            1e3 * p["decode_cpu_s_per_token"]["median"],
            ".2f",
        ),
        _row("KV length after prefill", u["kv_length"], p["kv_length"], "d"),
    ]
    if u["peak_memory"]:
        name = f"peak memory of generate above weights + inputs (MB; {u['peak_memory']['method']})"
        lines.append(_row(name, u["peak_memory"]["delta"] / 2**20, p["peak_memory"]["delta"] / 2**20, ".1f"))
        name = "peak memory incl. weights + inputs (MB)"
        lines.append(_row(name, u["peak_memory"]["peak"] / 2**20, p["peak_memory"]["peak"] / 2**20, ".1f"))
    fu, fp = f["unpruned"]["total"], f["pruned"]["total"]
    lines += [
        _row("prefill GFLOPs (analytic)", fu / 1e9, fp / 1e9, ".2f"),
        _row(
            "prefill GFLOP/s (analytic / time)",
            fu / 1e9 / u["prefill_s"]["median"],
            fp / 1e9 / p["prefill_s"]["median"],
            ".1f",
        ),
        "",
        "Pruned prefill GFLOPs: "
        + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in f["pruned"].items() if k not in ("total", "selection")),
        f"Analytic prefill bound FLOPs(pruned)/FLOPs(unpruned): {f['bound']:.3f}",
        f"Simple bound (K+1)/L + (1-(K+1)/L)*(kept+text)/all (decoder only): {f['simple_bound']:.3f}",
        f"Measured prefill ratio / analytic bound: {results['prefill_over_bound']:.3f} (wall), "
        f"{results['prefill_cpu_over_bound']:.3f} (CPU time)",
        f"Prefill ratio of the fastest repeats (least disturbed by other jobs): {_fastest(u, p, 'prefill_s'):.3f} "
        f"(wall), {_fastest(u, p, 'prefill_cpu_s'):.3f} (CPU time)",
    ]
    return "\n".join(lines)
