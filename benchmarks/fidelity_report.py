"""The tables, plot and summary of `benchmarks.fidelity` (per task one row per arm, see its docstring)."""

from __future__ import annotations

from pathlib import Path

AT_PLUS = "GlimpsePrune @ GlimpsePrune+'s val keep"
"""The label of stage 1 at GlimpsePrune+'s budget (its threshold calibrated to GlimpsePrune+'s validation keep)."""
MODE_THRESHOLD = 0.5
"""GlimpsePrune+'s second operating point: a stage-2 rollout keeps each token with its VIP probability, so the mask
it samples most often keeps those above 0.5 (the first is stage 1's calibrated threshold, which the run inherits)."""
PLUS_MODE = f"GlimpsePrune+ at threshold {MODE_THRESHOLD:g}"
"""The label of GlimpsePrune+ at MODE_THRESHOLD."""
GLIMPSES = ("GlimpsePrune", "GlimpsePrune+", PLUS_MODE)
"""The glimpse rows the one-region comparison measures every pruner against, each at its own keep."""


def plus_seed_label(seed: int) -> str:
    """The label of GlimpsePrune+ trained again at another stage-2 seed (the row of record uses the recipe's)."""
    return f"GlimpsePrune+, stage-2 seed {seed}"


def _seed_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["family"] == "glimpse-plus-seed"]


def _groups(rows: list[dict]) -> list[str]:
    """The question kinds of the task, in the order the unpruned row lists them."""
    return list(rows[0]["metric_by_group"])


def markdown_report(report: dict) -> str:
    """One section a task."""
    sections = [
        f"{report['threads']} threads (training: {report['jobs']} runs at a time, {report['training_threads']} thread"
        f" each); {report['command']}"
    ]
    for name, task in report["tasks"].items():
        sections += [f"## Task {name}", markdown_table(task, report["threads"])]
        if task.get("one_region"):
            sections.append(one_region_table(task["one_region"]))
            if any("by_attribute" in row for row in task["one_region"]["rows"]):
                sections.append(attribute_table(task["one_region"]))
    return "\n\n".join(sections)


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table(report: dict, threads: int) -> str:
    rows = report["rows"]
    unpruned = rows[0]
    groups = _groups(rows)
    lines = [
        f"Test split: {report['test_rows']} rows; glimpse layer K = {report['layer']} of {report['num_layers']}; "
        f"thresholds calibrated on the validation split ({report['val_rows']} rows). {threads} threads; prefill = "
        "mean time to the first token per batch, ratio to unpruned in the same run. Per kind: exact match / keep ratio.",
        "",
        "| arm | cut after layer | target keep | keep ratio | kept tokens | exact match | "
        + " | ".join(groups)
        + " | box recall | prefill ms | prefill ratio |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(groups) + "---:|---:|---:|",
    ]
    for row in rows:
        by_kind = [
            f"{_cell(row['metric_by_group'].get(g), '{:.3f}')} / {_cell(row['keep_ratio_by_group'].get(g), '{:.3f}')}"
            for g in groups
        ]
        cells = [
            row["label"],
            row["layer"],
            _cell(row["target_keep_ratio"], "{:.3f}"),
            _cell(row["keep_ratio"], "{:.3f}"),
            _cell(row["kept_tokens"], "{:.1f}"),
            _cell(row["metric"], "{:.3f}"),
            *by_kind,
            _cell(row["box_recall"], "{:.3f}"),
            _cell(row["prefill_ms"], "{:.1f}"),
            _cell(row["prefill_ratio"], "{:.3f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Unpruned exact match {unpruned['metric']:.3f}; the question alone (the most frequent training answer to the "
        f"same question, no image) scores {report['question_only_prior']:.3f}.",
    ]
    return "\n".join(lines)


def one_region_table(part: dict) -> str:
    """The one-region rows alone: every pruner at a glimpse's keep on them (each of GLIMPSES in turn), and its gap to
    that glimpse."""
    rows = part["rows"]
    lines = [
        f"### One-region questions ({', '.join(part['kinds'])}; {rows[0]['scored']} test rows): every pruner at "
        f"each glimpse's keep ratio on them ({', '.join(g for g in GLIMPSES if _pick(rows, g))}) and its layer"
        + (
            ""
            if part.get("region_share") is None
            else f" (the region's share of the tokens: {part['region_share']:.3f})"
        ),
        "",
        "| arm | cut after layer | keep ratio | exact match | points below the glimpse at that keep |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        versus = _pick(rows, row.get("versus") or "GlimpsePrune")
        gap = "-" if row["family"].startswith("glimpse") else f"{100 * (versus['metric'] - row['metric']):+.1f}"
        lines.append(f"| {row['label']} | {row['layer']} | {row['keep_ratio']:.3f} | {row['metric']:.3f} | {gap} |")
    return "\n".join(lines)


def attribute_table(part: dict) -> str:
    """The glimpse rows (and unpruned) of the one-region comparison by the attribute the task breaks them down by."""
    rows = [r for r in part["rows"] if r["family"] == "unpruned" or r["family"].startswith("glimpse")]
    values = list(rows[0]["by_attribute"])
    counts = ", ".join(f"{v} {rows[0]['by_attribute'][v]['rows']}" for v in values)
    lines = [
        f"By {part['attribute']} (test rows: {counts}): exact match / kept tokens",
        "",
        "| arm | " + " | ".join(values) + " |",
        "|---|" + "---:|" * len(values),
    ]
    for row in rows:
        cells = [
            f"{row['by_attribute'][v]['metric']:.3f} / {row['by_attribute'][v]['kept_tokens']:.1f}" for v in values
        ]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _pick(rows: list[dict], label: str) -> dict | None:
    return next((r for r in rows if r["label"] == label), None)


def summary_lines(report: dict) -> list[str]:
    """The claims in words, each with the numbers it rests on."""
    rows = report["rows"]
    base, glimpse = rows[0], _pick(rows, "GlimpsePrune")
    lines = [
        f"unpruned: exact match {base['metric']:.3f}",
        f"GlimpsePrune: exact match {glimpse['metric']:.3f} keeping {glimpse['keep_ratio']:.3f} of the visual tokens "
        f"({glimpse['kept_tokens']:.1f} of {glimpse['visual_tokens']:.0f}); prefill {glimpse['prefill_ratio']:.2f}x",
    ]
    same = [r for r in rows if r["layer"] == str(report["layer"]) and r["family"] not in ("glimpse",)]
    same = [
        r
        for r in same
        if r["target_keep_ratio"] is not None and abs(r["target_keep_ratio"] - glimpse["keep_ratio"]) < 1e-9
    ]
    for row in same:
        lines.append(f"  at the same layer and keep ratio, {row['label']}: {row['metric']:.3f}")
    for label in ("GlimpsePrune (KL only)", "GlimpsePrune+", PLUS_MODE):
        row = _pick(rows, label)
        if row is not None:
            lines.append(
                f"{label}: exact match {row['metric']:.3f} keeping {row['keep_ratio']:.3f}, box recall "
                f"{_cell(row['box_recall'], '{:.3f}')} (box-supervised: {_cell(glimpse['box_recall'], '{:.3f}')})"
            )
    plus, at_plus = _pick(rows, "GlimpsePrune+"), next((r for r in rows if r["label"].startswith(AT_PLUS)), None)
    seeds = _seed_rows(rows)
    if plus is not None and seeds:
        runs = [plus, *seeds]
        lines.append(
            f"GlimpsePrune+ over {len(runs)} stage-2 seeds (the recipe's, then "
            + ", ".join(r["label"].rsplit(" ", 1)[-1] for r in seeds)
            + "): exact match "
            + " / ".join(f"{r['metric']:.3f}" for r in runs)
            + ", keeping "
            + " / ".join(f"{r['keep_ratio']:.3f}" for r in runs)
        )
    if plus is not None and at_plus is not None:
        lines.append(
            f"at GlimpsePrune+'s budget (validation keep {report['plus_val_keep']:.3f}): GlimpsePrune+ "
            f"{plus['metric']:.3f} keeping {plus['keep_ratio']:.3f}, stage 1 {at_plus['metric']:.3f} keeping "
            f"{at_plus['keep_ratio']:.3f}"
        )
    sweep = [r for r in rows if r["family"] in ("glimpse-k", "glimpse-plus-k")]
    for row in sweep:
        lines.append(
            f"{row['label']}: exact match {row['metric']:.3f} keeping {row['keep_ratio']:.3f}; prefill bound of the "
            f"decoder (K+1)/L = {row['prefill_bound']:.2f}, measured prefill ratio {row['prefill_ratio']:.2f}"
        )
    for family, name in (("glimpse-k", "stage 1"), ("glimpse-plus-k", "GlimpsePrune+")):
        close = sorted(
            int(r["layer"]) for r in sweep if r["family"] == family and r["metric"] >= base["metric"] - 0.02
        )
        if any(r["family"] == family for r in sweep):
            lines.append(f"earliest K within 2 points of unpruned, {name}: {close[0] if close else 'none'}")
    part = report.get("one_region")
    if part:
        many = [g for g in _groups(rows) if g not in part["kinds"]]
        for label in (*GLIMPSES, *(r["label"] for r in seeds)):
            row, mine = _pick(rows, label), _pick(part["rows"], label)
            if row is None or mine is None:
                continue
            if many:
                keep = row["keep_ratio_by_group"]
                on_many, on_one = _mean([keep[g] for g in many]), _mean([keep[g] for g in part["kinds"]])
                lines.append(
                    f"the budget follows the question: {label} keeps {on_many:.3f} on {', '.join(many)} and "
                    f"{on_one:.3f} on one-region questions ({on_many / max(on_one, 1e-9):.1f}x)"
                )
            versus = [f"{r['label']} {r['metric']:.3f}" for r in part["rows"] if r.get("versus") == label]
            lines.append(
                f"one-region questions: unpruned {part['rows'][0]['metric']:.3f}, {label} {mine['metric']:.3f} at "
                f"keep {mine['keep_ratio']:.3f}"
                + (f"; at the same keep and layer: {', '.join(versus)}" if versus else "")
            )
    lines.append(f"wall time of this task: {report['wall_seconds'] / 60:.1f} min")
    return lines


def plot(report: dict, path: Path) -> None:
    """Per task (one row each): (a) exact match against keep ratio at layer K; (b) exact match against prefill time
    ratio, native points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = report["tasks"]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4.5 * len(tasks)), squeeze=False)
    for (name, task), (left, right) in zip(tasks.items(), axes):
        _plot_task(name, task, left, right)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_task(name: str, report: dict, left, right) -> None:
    import matplotlib.ticker

    rows = [r for r in report["rows"] if r["family"] not in ("glimpse-k", "glimpse-plus-k")]
    k = str(report["layer"])
    families = sorted({r["family"] for r in rows} - {"unpruned"})
    colours = {family: f"C{i % 10}" for i, family in enumerate(families)}  # one colour per method in both panels
    for family in families:
        at_k = sorted(
            (r for r in rows if r["family"] == family and r["layer"] in (k, "-")), key=lambda r: r["keep_ratio"]
        )
        if at_k:
            marker = "*" if family.startswith("glimpse") else "o"
            left.plot(
                [r["keep_ratio"] for r in at_k],
                [r["metric"] for r in at_k],
                marker=marker,
                label=family,
                color=colours[family],
            )
        native = [
            r for r in rows if r["family"] == family and (r["layer"] not in (k,) or family.startswith("glimpse"))
        ]
        if native:
            right.scatter(
                [r["prefill_ratio"] for r in native],
                [r["metric"] for r in native],
                label=family,
                s=30,
                color=colours[family],
            )
    base = rows[0]["metric"]
    for ax in (left, right):
        ax.axhline(base, color="grey", linestyle="--", linewidth=1, label="unpruned")
        ax.set_ylabel("exact match (test split)")
        ax.grid(alpha=0.3)
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xticks([0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    left.legend(fontsize=7, loc="lower right")
    left.set_xlabel("keep ratio of visual tokens")
    left.set_title(f"{name} (a) which tokens to keep: every pruner after layer K = {k}")
    right.set_xlabel("prefill time / unpruned prefill time")
    right.set_title(f"{name} (b) what a user pays: native operating points")
    right.legend(fontsize=7, loc="lower right")
