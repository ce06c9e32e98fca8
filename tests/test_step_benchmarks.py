"""The training-step benchmarks (GRPO against plain TRL, stage 1 against a plain step) run end to end at a tiny size
and report what they promise. No timing assertions."""

from __future__ import annotations

import json

import pytest

from glimpserl.benchmarks import grpo_step, stage1_step
from glimpserl.benchmarks.arguments import FAMILIES

TINY = ["--hidden", "64", "--layers", "4", "--heads", "4", "--vision-hidden", "32", "--vision-layers", "4"]
TINY += ["--visual-tokens", "64", "--vocab", "2048", "--threads", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_grpo_step_benchmark_reports_every_arm_with_its_split_and_memory(tmp_path, family):
    out = tmp_path / "grpo.json"
    args = [*TINY, "--family", family, "--completion-tokens", "16", "--steps", "2", "--rounds", "1"]
    grpo_step.main([*args, "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["visual_tokens_per_image"] == 64 and saved["model"]["vocab"] == 2048
    assert saved["model"]["family"] == family
    arms = saved["arms"]
    assert list(arms) == list(grpo_step.ARMS)
    for arm in arms.values():
        # One timed step per arm here, so its parts add up to it exactly.
        assert sum(arm["split_s"].values()) == pytest.approx(arm["step_s"])
        assert min(arm["split_s"][part] for part in ("generation", "log_probs", "backward")) > 0
        assert arm["peak_memory_bytes"] > 0
    assert (
        arms["pruned"]["kept_tokens"] == arms["sample"]["kept_tokens"] == 6 and arms["keep_all"]["kept_tokens"] == 64
    )
    for arm in ("pruned", "keep_all", "sample"):
        assert {"step", "peak_memory", "generation", "log_probs", "backward"} <= set(saved["ratios"][arm])
    assert saved["ratios"]["sample_over_pruned"] > 0
    bounds = saved["bounds"]  # 64 visual tokens, keep 10% = 6, 16 completion tokens, K = 2 of 4 layers
    assert 0 < bounds["generation_kv"] < 1 and bounds["log_probs"] == pytest.approx(
        0.75 + 0.25 * bounds["generation_kv"]
    )


@pytest.mark.slow
def test_stage1_step_benchmark_on_a_given_shape(tmp_path):
    out = tmp_path / "stage1.json"
    stage1_step.main([*TINY, "--repeats", "1", "--batch", "2", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["visual_tokens_per_image"] == 64 and saved["model"]["hidden"] == 64 and saved["batch"] == 2
    assert saved["ratio"] == pytest.approx(saved["stage1_step_s"] / saved["plain_fwd_bwd_s"])
    assert saved["shared_teacher_ratio"] == pytest.approx(saved["stage1_step_s"] / saved["stage1_separate_teacher_s"])
