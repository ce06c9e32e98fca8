"""The numbers `glimpserl eval` reports per pruner, and the markdown table comparing them.

One result per pruner (the `results` list of the JSON report):
    pruner               str    glimpse | none | downsample | a selector name
    target_keep_ratio    float  the keep ratio the pruner was asked for (null: glimpse and none decide themselves)
    metric               float  mean metric over the rows the metric applies to (null if none)
    metric_by_group      dict   the metric per value of the rows' group column (e.g. question kind); {} if none
    keep_ratio_by_group  dict   the mean keep ratio per value of the group column (a dynamic budget shows here)
    scored               int    rows the metric applies to (a reward's None = not applicable)
    keep_ratio           float  mean kept / visual tokens per row (downsample: its visual tokens / the original's)
    kept_tokens          float  mean kept visual tokens per row
    visual_tokens        float  mean visual tokens per row before pruning
    kv_length            float  mean cached tokens per row after prefill (text + kept visual tokens, no padding)
    prefill_ms           float  mean per batch: generate start to the first token (vision encoder included)
    decode_ms_per_token  float  mean time of one decode step of a batch (null if no step after the first token)
    box_recall           float  mean over rows with boxes of box cells kept / box cells (null: no boxes or no
    box_precision        float  keep mask); precision = kept cells on a box / kept cells
    box_rows             int    rows that contributed to the box scores
    seconds              float  wall time of the pruner's whole pass
    per_sample           list   {row, prediction, score, visual_tokens, kept_tokens, keep_ratio, kv_length,
                                 [box_recall, box_precision], [group]}
"""

from __future__ import annotations

COLUMNS = (
    ("keep_ratio", "keep ratio", "{:.3f}"),
    ("kept_tokens", "kept tokens", "{:.1f}"),
    ("kv_length", "KV length", "{:.1f}"),
    ("prefill_ms", "prefill ms", "{:.1f}"),
    ("decode_ms_per_token", "decode ms/token", "{:.2f}"),
    ("box_recall", "box recall", "{:.3f}"),
)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def arm_summary(name: str, target: float | None, records: list[dict], timings: list[dict], seconds: float) -> dict:
    """Aggregate one pruner's per-sample records and per-batch timings (see the module docstring)."""
    steps = sum(t["decode_steps"] for t in timings)
    boxed = [r for r in records if "box_recall" in r]
    scores = [r["score"] for r in records if r["score"] is not None]
    groups = sorted({r["group"] for r in records if "group" in r})
    by_group = {g: _mean([r["score"] for r in records if r.get("group") == g]) for g in groups}
    return {
        "pruner": name,
        "target_keep_ratio": target,
        "metric": _mean(scores),
        "metric_by_group": by_group,
        "keep_ratio_by_group": {g: _mean([r["keep_ratio"] for r in records if r.get("group") == g]) for g in groups},
        "scored": len(scores),
        **{key: _mean([r[key] for r in records]) for key in ("keep_ratio", "kept_tokens", "visual_tokens")},
        "kv_length": _mean([r["kv_length"] for r in records]),
        "prefill_ms": 1000 * _mean([t["prefill_s"] for t in timings]),
        "decode_ms_per_token": 1000 * sum(t["decode_s"] for t in timings) / steps if steps else None,
        "box_recall": _mean([r["box_recall"] for r in boxed]),
        "box_precision": _mean([r["box_precision"] for r in boxed]),
        "box_rows": len(boxed),
        "seconds": seconds,
        "per_sample": records,
    }


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table(report: dict) -> str:
    """Pruners as rows: the metric, keep ratio, kept tokens, KV length, prefill and decode time, box recall; then per
    question kind (when the rows carry one) the metric and the keep ratio."""
    settings = report["settings"]
    ratio = report["baseline_keep_ratio"]
    if ratio is None:
        how = "no baselines with a keep ratio ran"
    elif settings["keep_ratio_mode"] == "matched":
        how = f"baselines matched to the glimpse's mean keep ratio {ratio:.3f}"
    else:
        how = f"baselines at the fixed keep ratio {ratio:.3f}"
    groups = list(report["results"][0]["metric_by_group"]) if report["results"] else []
    header = [
        "pruner",
        settings["metric"],
        *(title for _, title, _ in COLUMNS),
        *(f"{g}: metric / keep" for g in groups),
    ]
    lines = [
        f"{report['dataset']['rows']} rows of {report['dataset']['source']}; {how}; "
        f"times per batch of {settings['batch_size']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for result in report["results"]:
        cells = [result["pruner"], _cell(result["metric"], "{:.3f}")]
        cells += [_cell(result[key], fmt) for key, _, fmt in COLUMNS]
        for g in groups:
            metric, keep = result["metric_by_group"].get(g), result["keep_ratio_by_group"].get(g)
            cells.append(f"{_cell(metric, '{:.3f}')} / {_cell(keep, '{:.3f}')}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def question_prior(train_rows, eval_rows) -> dict:
    """What the question alone is worth: answer every held-out row with the most frequent training answer of the same
    question text (the best a model that never looks at the image can do on this data); exact match, overall and
    per `kind` when rows carry it. Rows are dicts with `question`, `answer` (a list) and optionally `kind`."""
    from collections import Counter, defaultdict

    seen: dict[str, Counter] = defaultdict(Counter)
    overall: Counter = Counter()
    for row in train_rows:
        seen[row["question"]][row["answer"][0]] += 1
        overall[row["answer"][0]] += 1
    fallback = overall.most_common(1)[0][0] if overall else ""
    hits: dict[str, list[float]] = defaultdict(list)
    for row in eval_rows:
        guess = seen[row["question"]].most_common(1)[0][0] if seen.get(row["question"]) else fallback
        hit = float(guess.strip().lower() in {a.strip().lower() for a in row["answer"]})
        hits["all"].append(hit)
        if row.get("kind") is not None:
            hits[row["kind"]].append(hit)
    means = {k: sum(v) / len(v) for k, v in hits.items()}
    return {"exact_match": means.pop("all", None), "by_group": dict(sorted(means.items()))}
