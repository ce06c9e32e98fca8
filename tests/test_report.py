"""The per-pruner summary `glimpserl eval` reports (rl/eval/report.py): per question kind, the metric and the keep
ratio, so that a budget that follows the question shows in the table."""

import pytest

from glimpserl.rl.eval.report import arm_summary, markdown_table


def _records():
    # Two one-object questions keeping 1 of 10 tokens, one question that needs all of them keeping 8.
    return [
        {
            "row": 0,
            "score": 1.0,
            "visual_tokens": 10,
            "kept_tokens": 1,
            "keep_ratio": 0.1,
            "kv_length": 5,
            "group": "colour",
        },
        {
            "row": 1,
            "score": 0.0,
            "visual_tokens": 10,
            "kept_tokens": 1,
            "keep_ratio": 0.1,
            "kv_length": 5,
            "group": "colour",
        },
        {
            "row": 2,
            "score": 1.0,
            "visual_tokens": 10,
            "kept_tokens": 8,
            "keep_ratio": 0.8,
            "kv_length": 12,
            "group": "majority",
        },
    ]


def test_summary_and_table_give_metric_and_keep_per_kind():
    timings = [{"prefill_s": 0.01, "decode_s": 0.02, "decode_steps": 2}]
    summary = arm_summary("glimpse", None, _records(), timings, 1.0)
    assert summary["metric_by_group"] == {"colour": 0.5, "majority": 1.0}
    assert summary["keep_ratio_by_group"] == pytest.approx({"colour": 0.1, "majority": 0.8})
    assert summary["keep_ratio"] == pytest.approx(1.0 / 3)
    report = {
        "settings": {"keep_ratio_mode": "matched", "metric": "exact_match", "batch_size": 4},
        "baseline_keep_ratio": None,
        "dataset": {"rows": 3, "source": "test.jsonl"},
        "results": [summary],
    }
    table = markdown_table(report)
    header, _, row = table.splitlines()[2:5]
    assert header.endswith("| colour: metric / keep | majority: metric / keep |")
    assert row.endswith("| 0.500 / 0.100 | 1.000 / 0.800 |")
