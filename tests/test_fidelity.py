"""The reproduction command, shortened: every stage trains for 2 steps, every arm runs on 16 test rows, on every task.
It checks the wiring (the training runs through the real CLI, every arm of the tables, the K sweep, the report files)
and that each shipped mini model, unpruned, beats what the question alone is worth."""

import json

import pytest

from glimpserl.benchmarks import fidelity
from glimpserl.benchmarks.fidelity_report import AT_PLUS, GLIMPSES, PLUS_MODE, plus_seed_label


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
    # GlimpsePrune+ also at the mask its sampled rollouts drew most often: the same weights, threshold 0.5.
    mode = [row for row in report["rows"] if row["label"] == PLUS_MODE]
    assert len(mode) == 1 and mode[0]["family"] == "glimpse-plus-mode" and mode[0]["threshold"] == 0.5
    # GlimpsePrune+ again at each further stage-2 seed, each trained from the same stage-1 glimpse.
    seeds = fidelity.TASKS[name].plus_seeds
    assert [row["label"] for row in report["rows"] if row["family"] == "glimpse-plus-seed"] == [
        plus_seed_label(seed) for seed in seeds
    ]
    assert {run for run in report["training"] if run.startswith("grpo-seed")} == {f"grpo-seed{s}" for s in seeds}
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
        for glimpse in GLIMPSES:
            keep = next(row["keep_ratio"] for row in part["rows"] if row["label"] == glimpse)
            others = [row for row in part["rows"] if row.get("versus") == glimpse]
            assert {row["family"] for row in others} == pruners
            assert all(row["target_keep_ratio"] == pytest.approx(keep) for row in others)
        assert all(set(row["metric_by_group"]) == {"colour"} for row in part["rows"])
        assert part["rows"][-1]["label"] == plus_seed_label(1) and "versus" not in part["rows"][-1]
        # Every row broken down by the asked object's colour, over all its rows.
        assert part["attribute"] == "asked colour"
        for row in part["rows"]:
            assert set(row["by_attribute"]) <= {"red", "green", "blue", "yellow"}
            assert sum(v["rows"] for v in row["by_attribute"].values()) == row["scored"]
            total = sum(v["rows"] * v["metric"] for v in row["by_attribute"].values())
            assert total == pytest.approx(row["metric"] * row["scored"])
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


def test_further_stage2_seeds_and_the_breakdown_by_attribute_by_hand():
    """A second stage-2 seed: its spread beside the run of record; the one-region rows by the attribute."""
    from glimpserl.benchmarks.fidelity_report import attribute_table, summary_lines

    records = [
        {"row": 7, "score": 1.0, "kept_tokens": 4},
        {"row": 3, "score": 0.0, "kept_tokens": 2},
        {"row": 5, "score": 1.0, "kept_tokens": 5},
    ]
    samples = [{"source_row": 3, "answer": ["3 green"]}, {"source_row": 5, "answer": ["1 green"]}]
    samples.append({"source_row": 7, "answer": ["2 red", "2 crimson"]})  # the first reference answer counts
    colours = fidelity.by_attribute(records, samples, lambda answer: answer.split()[-1])
    assert list(colours) == ["green", "red"]
    assert colours["green"] == {"rows": 2, "metric": 0.5, "kept_tokens": 3.5}
    assert colours["red"] == {"rows": 1, "metric": 1.0, "kept_tokens": 4.0}

    def row(label, family, metric, keep):
        return {
            "label": label, "family": family, "layer": "1", "metric": metric, "keep_ratio": keep, "kept_tokens": 1.0,
            "visual_tokens": 81, "prefill_ratio": 1.0, "target_keep_ratio": None, "box_recall": None,
            "metric_by_group": {"colour": metric}, "keep_ratio_by_group": {"colour": keep}, "scored": 3,
            "by_attribute": colours,
        }  # fmt: skip

    rows = [row("unpruned", "unpruned", 1.0, 1.0), row("GlimpsePrune", "glimpse", 0.9, 0.3)]
    rows += [row("GlimpsePrune+", "glimpse-plus", 0.8, 0.04), row(plus_seed_label(1), "glimpse-plus-seed", 0.7, 0.1)]
    rows.append(row("divprune (layer 1)", "divprune", 0.2, 0.04))
    part = {"kinds": ["colour"], "rows": rows, "attribute": "asked colour"}
    text = "\n".join(summary_lines({"rows": rows[:4], "layer": 1, "wall_seconds": 6, "one_region": part}))
    assert (
        "GlimpsePrune+ over 2 stage-2 seeds (the recipe's, then 1): exact match 0.800 / 0.700, keeping 0.040 / 0.100"
        in text
    )
    assert f"one-region questions: unpruned 1.000, {plus_seed_label(1)} 0.700 at keep 0.100\n" in text
    table = attribute_table(part)
    assert "By asked colour (test rows: green 2, red 1): exact match / kept tokens" in table
    assert f"| {plus_seed_label(1)} | 0.500 / 3.5 | 1.000 / 4.0 |" in table
    assert "divprune" not in table  # the glimpse rows and unpruned only


def test_one_region_comparison_without_such_rows_names_the_kinds():
    evaluator = fidelity.Evaluator(None, [{"kind": "majority"}])
    with pytest.raises(RuntimeError, match="the test split has no rows of kind colour for the one-region comparison"):
        fidelity.one_region(None, None, evaluator, ("colour",), "1", None)


def test_training_jobs_list_each_run_before_those_that_start_from_it():
    task = fidelity.TASKS["shapes"]
    vip, grpo = task.recipes / "vip.yaml", task.recipes / "grpo.yaml"
    jobs = fidelity.training_jobs(task, vip, grpo, quick=False)
    names = [job.name for job in jobs]
    k = fidelity.recipe_layer(vip)
    others = [layer for layer in task.layers if layer != k]
    expected = {"vip-box", "vip-kl", "vip-kl-bias", "grpo"} | {
        f"{s}-k{layer}" for s in ("vip-box", "grpo") for layer in others
    }
    assert set(names) == expected and len(names) == len(expected)
    for job in jobs:
        if job.name.startswith("grpo"):
            assert job.recipe == grpo and job.after == job.name.replace("grpo", "vip-box")
            assert names.index(job.after) < names.index(job.name)
        else:
            assert job.recipe == vip and job.after is None
    assert next(job for job in jobs if job.name == "vip-box-k0").overrides == ("--glimpse_layer", "0")
    places = fidelity.TASKS["places"]
    jobs = fidelity.training_jobs(places, places.recipes / "vip.yaml", places.recipes / "grpo.yaml", quick=False)
    seeded = [job for job in jobs if job.name.startswith("grpo-seed")]
    assert [(job.name, job.overrides, job.after) for job in seeded] == [("grpo-seed1", ("--seed", "1"), "vip-box")]


def _fake_training(monkeypatch, fail: str | None = None):
    """Replace the subprocess with a short sleep that logs when each run starts and ends."""
    import threading
    import time

    events, lock = [], threading.Lock()

    def train(job, work, quick, reuse):
        with lock:
            events.append(("start", job.name))
        time.sleep(0.05 if job.name.startswith("b") else 0.01)
        if job.name == fail:
            raise RuntimeError(f"stage {job.name} failed")
        with lock:
            events.append(("end", job.name))
        return {"seconds": 0.0, "name": job.name}

    monkeypatch.setattr(fidelity, "train", train)
    return events


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_train_all_runs_jobs_at_a_time_and_waits_for_the_run_a_job_starts_from(tmp_path, monkeypatch, jobs):
    from argparse import Namespace

    events = _fake_training(monkeypatch)
    plan = [fidelity.TrainJob(n, tmp_path) for n in ("b1", "b2", "a3")]
    plan += [fidelity.TrainJob("c1", tmp_path, after="b1"), fidelity.TrainJob("c2", tmp_path, after="b2")]
    results = fidelity.train_all(plan, tmp_path, Namespace(jobs=jobs, quick=True, reuse=False))
    assert list(results) == ["b1", "b2", "a3", "c1", "c2"] and results["c2"]["name"] == "c2"
    for child, parent in (("c1", "b1"), ("c2", "b2")):
        assert events.index(("end", parent)) < events.index(("start", child))
    running, most = 0, 0
    for kind, _ in events:
        running += 1 if kind == "start" else -1
        most = max(most, running)
    assert most == jobs


def test_train_all_stops_at_a_failure_and_never_starts_what_depends_on_it(tmp_path, monkeypatch):
    from argparse import Namespace

    events = _fake_training(monkeypatch, fail="b1")
    plan = [fidelity.TrainJob("b1", tmp_path), fidelity.TrainJob("c1", tmp_path, after="b1")]
    with pytest.raises(RuntimeError, match="stage b1 failed"):
        fidelity.train_all(plan, tmp_path, Namespace(jobs=2, quick=True, reuse=False))
    assert ("start", "c1") not in events


def test_train_all_refuses_a_job_listed_before_the_run_it_starts_from(tmp_path):
    from argparse import Namespace

    plan = [fidelity.TrainJob("c1", tmp_path, after="b1"), fidelity.TrainJob("b1", tmp_path)]
    with pytest.raises(ValueError, match="training job c1 starts from b1, which is listed after it"):
        fidelity.train_all(plan, tmp_path, Namespace(jobs=2, quick=True, reuse=False))


def test_jobs_must_be_at_least_one(capsys):
    with pytest.raises(SystemExit):
        fidelity.parse_args(["--jobs", "0"])
    assert "--jobs 0: at least one training run at a time" in capsys.readouterr().err
