"""The reproduction command, shortened: every stage trains for 2 steps, every arm runs on 16 test rows. It checks the
wiring (three training runs through the real CLI, every arm of the table, the report files) and that the shipped
mini model, unpruned, beats what the question alone is worth."""

import json

import pytest

from glimpserl.benchmarks import fidelity


@pytest.mark.slow
def test_quick_reproduction_runs_every_stage_and_arm(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIMPSERL_CACHE", str(tmp_path / "cache"))
    work, out = tmp_path / "work", tmp_path / "results"
    argv = ["--quick", "--work-dir", str(work), "--out-dir", str(out), "--batch-size", "8"]
    assert fidelity.main(argv) == 0
    report = json.loads((out / "fidelity-quick.json").read_text())
    labels = [row["label"] for row in report["rows"]]
    assert labels[:2] == ["unpruned", "GlimpsePrune"]
    assert {"GlimpsePrune (KL only)", "GlimpsePrune+", "gprune@input", "fastv@0", "cdpruner@input"} <= set(labels)
    for name in ("gprune", "fastv", "divprune", "cdpruner", "random", "downsample"):
        assert sum(row["family"] == name and row["layer"] != "input" for row in report["rows"]) >= 3, name
    assert report["test_rows"] == 16
    # Operating points are calibrated on the rows the run calibrated on (its validation file), not on test rows.
    assert report["val_rows"] == report["deploy"]["rows"] and report["deploy"]["source"].endswith("val.jsonl")
    assert "glimpse-kl-bias" in {row["family"] for row in report["rows"]}
    assert str(work) + "/" not in json.dumps(report)  # run folders are named relative to the work dir
    assert (out / "fidelity-quick.md").read_text().startswith("Test split: 16 rows")
    assert (out / "fidelity-quick.png").stat().st_size > 0
    unpruned = report["rows"][0]
    prior = report["question_only_prior"]
    assert unpruned["metric"] >= prior + 0.4, (unpruned["metric"], prior)
