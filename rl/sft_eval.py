"""Held-out answer quality of a VLM (stage sft, and the mini model's card): greedy answers scored by exact match,
overall and per question kind, next to what the question alone is worth (`question_prior`)."""

from __future__ import annotations

from ..rewards import build_reward
from .data import conversation_dataset, load_vqa
from .eval_report import question_prior
from .evaluate import GROUP_COLUMN, Arm, run_arm


def evaluate_answers(model, processor, eval_args, train_rows=None, batch_size: int = 8, max_new_tokens: int = 8):
    """Exact match of greedy answers on `eval_args`' data (a DataConfig); with `train_rows` (canonical rows) also the
    question-only prior. The model runs as it is (no glimpse is attached for this check)."""
    import dataclasses

    from .data_sources import read_table

    table = read_table(eval_args.dataset, eval_args.split)
    if GROUP_COLUMN in table.columns and GROUP_COLUMN not in eval_args.extra_columns:
        eval_args = dataclasses.replace(eval_args, extra_columns=[*eval_args.extra_columns, GROUP_COLUMN])
    rows, _ = load_vqa(eval_args)
    was_training = model.training
    model.eval()
    summary = run_arm(
        model,
        processor,
        conversation_dataset(rows, eval_args),
        Arm("unpruned"),
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
