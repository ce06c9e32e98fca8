"""The reproduction command, shortened: every stage trains for 2 steps, every arm runs on 16 test rows, on every task.
It checks the wiring (the training runs through the real CLI, every arm of the tables, the K sweep, the report files)
and that each shipped mini model, unpruned, beats what the question alone is worth."""

import json

import pytest

from glimpserl.benchmarks import fidelity
from glimpserl.benchmarks.fidelity_report import AT_PLUS


@pytest.mark.slow
def test_quick_reproduction_runs_every_stage_and_arm(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIMPSERL_CACHE", str(tmp_path / "cache"))
    work, out = tmp_path / "work", tmp_path / "results"
    argv = ["--quick", "--work-dir", str(work), "--out-dir", str(out), "--batch-size", "8"]
    assert fidelity.main(argv) == 0
    everything = json.loads((out / "fidelity-quick.json").read_text())
    assert set(everything["tasks"]) == set(fidelity.TASKS)
    for name, report in everything["tasks"].items():
        _check_task(name, report, work / name)
    text = (out / "fidelity-quick.md").read_text()
    assert "## Task shapes" in text and "## Task places" in text and "Test split: 16 rows" in text
    assert "### One-region questions (colour;" in text
    assert (out / "fidelity-quick.png").stat().st_size > 0
    assert str(work) + "/" not in json.dumps(everything)  # run folders are named relative to the work dir


def _check_task(name: str, report: dict, work) -> None:
    labels = [row["label"] for row in report["rows"]]
    assert labels[:2] == ["unpruned", "GlimpsePrune"]
    assert {"GlimpsePrune (KL only)", "GlimpsePrune+", "gprune@input", "fastv@0", "cdpruner@input"} <= set(labels)
    # Stage 1 at GlimpsePrune+'s budget: calibrated to GlimpsePrune+'s keep on the validation rows.
    at_plus = [row for row in report["rows"] if row["label"].startswith(AT_PLUS)]
    assert len(at_plus) == 1 and at_plus[0]["family"] == "glimpse" and 0 < report["plus_val_keep"] <= 1
    assert at_plus[0]["label"] == f"{AT_PLUS} {report['plus_val_keep']:.3f}"
    for pruner in ("gprune", "fastv", "divprune", "cdpruner", "random", "downsample"):
        assert sum(row["family"] == pruner and row["layer"] != "input" for row in report["rows"]) >= 3, pruner
    assert report["test_rows"] == 16
    # Operating points are calibrated on the rows the run calibrated on (its validation file), not on test rows.
    assert report["val_rows"] == report["deploy"]["rows"] and report["deploy"]["source"].endswith("val.jsonl")
    has_contrast = "glimpse-kl-bias" in {row["family"] for row in report["rows"]}
    assert has_contrast == fidelity.TASKS[name].bias_contrast == ("vip-kl-bias" in report["training"])
    assert str(work) + "/" not in json.dumps(report)
    unpruned = report["rows"][0]
    prior = report["question_only_prior"]
    assert unpruned["metric"] >= prior + 0.4, (name, unpruned["metric"], prior)
    # The K sweep, shortened to the deployed K and the earliest one, for both stages, each beside its bound.
    sweep = {(row["family"], row["layer"]) for row in report["rows"] if row["family"].endswith("-k")}
    assert sweep == {(f, k) for f in ("glimpse-k", "glimpse-plus-k") for k in ("0", str(report["layer"]))}
    bounds = {row["layer"]: row["prefill_bound"] for row in report["rows"] if row["family"].endswith("-k")}
    assert bounds["0"] == 1 / report["num_layers"]
    kinds = {"shapes": {"colour", "shape"}, "places": {"colour", "majority"}}[name]
    assert set(unpruned["keep_ratio_by_group"]) == set(unpruned["metric_by_group"]) == kinds
    if name == "places":  # the one-region rows alone, every pruner at the glimpse's keep on them
        part = report["one_region"]
        assert part["kinds"] == ["colour"] and part["region_share"] == pytest.approx(4 / 81)
        assert [row["label"] for row in part["rows"][:2]] == ["unpruned", "GlimpsePrune"]
        pruners = {"gprune", "fastv", "divprune", "cdpruner", "random", "downsample"}
        for glimpse in ("GlimpsePrune", "GlimpsePrune+"):
            keep = next(row["keep_ratio"] for row in part["rows"] if row["label"] == glimpse)
            others = [row for row in part["rows"] if row.get("versus") == glimpse]
            assert {row["family"] for row in others} == pruners
            assert all(row["target_keep_ratio"] == pytest.approx(keep) for row in others)
        assert all(set(row["metric_by_group"]) == {"colour"} for row in part["rows"])
    else:
        assert "one_region" not in report


def test_one_region_lines_and_table_by_hand():
    """The budget ratio between question kinds and each pruner's gap to the glimpse on one-region rows."""
    from glimpserl.benchmarks.fidelity_report import one_region_table, summary_lines

    def row(label, metric, keep, by_kind):
        return {
            "label": label, "family": label, "layer": "1", "metric": metric, "keep_ratio": keep, "kept_tokens": 1.0,
            "visual_tokens": 81, "prefill_ratio": 1.0, "target_keep_ratio": None, "box_recall": None,
            "metric_by_group": by_kind, "keep_ratio_by_group": by_kind, "scored": 4,
        }  # fmt: skip

    glimpse_row = {**row("GlimpsePrune", 0.1, 0.05, {}), "family": "glimpse"}
    versus = [
        {**row("divprune", 0.8, 0.05, {}), "versus": "GlimpsePrune"},
        {**row("divprune at plus", 0.4, 0.03, {}), "family": "divprune", "versus": "GlimpsePrune+"},
    ]
    part = {
        "kinds": ["colour"],
        "region_share": 4 / 81,
        "rows": [row("unpruned", 1.0, 1.0, {}), glimpse_row, versus[0]]
        + [{**row("GlimpsePrune+", 0.9, 0.03, {}), "family": "glimpse-plus"}, versus[1]],
    }
    rows = [row("unpruned", 1.0, 1.0, {"colour": 1.0, "majority": 1.0}), row("GlimpsePrune", 0.5, 0.25, {})]
    rows.append(row("GlimpsePrune+", 0.6, 0.1, {}))
    rows[1]["keep_ratio_by_group"] = {"colour": 0.05, "majority": 0.4}
    rows[2]["keep_ratio_by_group"] = {"colour": 0.03, "majority": 0.3}
    rows.append({**row(f"{AT_PLUS} 0.110", 0.4, 0.11, {}), "family": "glimpse"})
    report = {"rows": rows, "layer": 1, "one_region": part, "wall_seconds": 60, "plus_val_keep": 0.11}
    text = "\n".join(summary_lines(report))
    assert (
        "at GlimpsePrune+'s budget (validation keep 0.110): GlimpsePrune+ 0.600 keeping 0.100, stage 1 0.400 keeping "
        "0.110" in text
    )
    assert "GlimpsePrune keeps 0.400 on majority and 0.050 on one-region questions (8.0x)" in text
    assert "GlimpsePrune+ keeps 0.300 on majority and 0.030 on one-region questions (10.0x)" in text
    assert "GlimpsePrune 0.100 at keep 0.050; at the same keep and layer: divprune 0.800\n" in text
    assert "GlimpsePrune+ 0.900 at keep 0.030; at the same keep and layer: divprune at plus 0.400\n" in text
    table = one_region_table(part)
    assert "(colour; 4 test rows)" in table and "share of the tokens: 0.049" in table
    assert "| divprune | 1 | 0.050 | 0.800 | -70.0 |" in table  # against GlimpsePrune
    assert "| divprune at plus | 1 | 0.030 | 0.400 | +50.0 |" in table  # against GlimpsePrune+
    assert "| GlimpsePrune+ | 1 | 0.030 | 0.900 | - |" in table and "| GlimpsePrune | 1 | 0.050 | 0.100 | - |" in table


def test_one_region_comparison_without_such_rows_names_the_kinds():
    evaluator = fidelity.Evaluator(None, [{"kind": "majority"}])
    with pytest.raises(RuntimeError, match="the test split has no rows of kind colour for the one-region comparison"):
        fidelity.one_region(None, None, evaluator, ("colour",), "1", None)
