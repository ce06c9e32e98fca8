"""Evaluation: `glimpserl eval`'s settings (`settings`) and main (`compare`), one pruner's run over a data set
(`arms`), the report tables (`report`), and the held-out checks a training run ends with (`glimpse` for stage 1,
`answers` for stage sft)."""

from .. import lazy_exports

EXPORTS = {
    ".settings": "EvalSettings add_eval_arguments",
    ".compare": "resolve_settings run_eval",
    ".arms": "run_arm",
    ".glimpse": "evaluate_glimpse calibrate_threshold",
    ".answers": "evaluate_answers",
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
