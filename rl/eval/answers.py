"""Held-out answer quality of a VLM (stage sft, and the mini model's card): greedy answers scored by exact match,
overall and per question kind, next to what the question alone is worth (`question_prior`)."""

from __future__ import annotations

from ...rewards import build_reward
from ..data.conversation import conversation_dataset
from .arms import GROUP_COLUMN, PrunerSetup, run_arm
from .report import question_prior


def evaluate_answers(
    model, processor, rows, eval_args, train_rows=None, batch_size: int = 8, max_new_tokens: int = 8
) -> dict:
    """Exact match of greedy answers on `rows` (canonical rows loaded from `eval_args`, a DataConfig, with the
    question kind where the data has one); with `train_rows` (canonical rows) also the question-only prior. The
    model runs as it is (no glimpse is attached for this check)."""
    was_training = model.training
    model.eval()
    summary = run_arm(
        model,
        processor,
        conversation_dataset(rows, eval_args),
        PrunerSetup("unpruned"),
        build_reward("exact_match"),
        batch_size,
        max_new_tokens,
        GROUP_COLUMN,
    )
    model.train(was_training)
    report = {
        "source": eval_args.dataset,
        "rows": len(rows),
        "exact_match": summary["metric"],
        "exact_match_by_kind": summary["metric_by_group"],
        "examples": [{k: r[k] for k in ("row", "prediction", "score")} for r in summary["per_sample"][:8]],
    }
    if train_rows is not None:
        prior = question_prior(_plain_rows(train_rows), _plain_rows(rows))
        report["question_only_prior"] = prior["exact_match"]
        report["question_only_prior_by_kind"] = prior["by_group"]
    return report


def _plain_rows(dataset) -> list[dict]:
    columns = [c for c in ("question", "answer", GROUP_COLUMN) if c in dataset.column_names]
    return [dict(zip(columns, values)) for values in zip(*(dataset[c] for c in columns))]
