"""The table, plot and summary of `benchmarks.fidelity` (one row per arm, see its docstring)."""

from __future__ import annotations

from pathlib import Path

GROUPS = ("colour", "shape")


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown_table(report: dict) -> str:
    rows = report["rows"]
    unpruned = rows[0]
    lines = [
        f"Test split: {report['test_rows']} rows; glimpse layer K = {report['layer']}; thresholds calibrated on the "
        f"validation split ({report['val_rows']} rows). {report['threads']} threads; prefill = mean time to the first "
        "token per batch, ratio to unpruned in the same run.",
        "",
        "| arm | cut after layer | target keep | keep ratio | kept tokens | exact match | "
        + " | ".join(GROUPS)
        + " | prefill ms | prefill ratio |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(GROUPS) + "---:|---:|",
    ]
    for row in rows:
        groups = [_cell(row["metric_by_group"].get(g), "{:.3f}") for g in GROUPS]
        cells = [
            row["label"],
            row["layer"],
            _cell(row["target_keep_ratio"], "{:.3f}"),
            _cell(row["keep_ratio"], "{:.3f}"),
            _cell(row["kept_tokens"], "{:.1f}"),
            _cell(row["metric"], "{:.3f}"),
            *groups,
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
    for label in ("GlimpsePrune (KL only)", "GlimpsePrune+"):
        row = _pick(rows, label)
        if row is not None:
            lines.append(f"{label}: exact match {row['metric']:.3f} keeping {row['keep_ratio']:.3f}")
    lines.append(f"wall time of the whole reproduction: {report['wall_seconds'] / 60:.1f} min")
    return lines


def plot(report: dict, path: Path) -> None:
    """(a) exact match against keep ratio at layer K; (b) exact match against prefill time ratio, native points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = report["rows"]
    k = str(report["layer"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
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
    left.set_title(f"(a) which tokens to keep: every pruner after layer K = {k}")
    right.set_xlabel("prefill time / unpruned prefill time")
    right.set_title("(b) what a user pays: native operating points")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
