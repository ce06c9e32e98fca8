"""Training, evaluation and export of the glimpse, one room per concern (docs/layout.md):

- `data/`      rows, sources, validation, conversational prompts, collation, the synthetic tasks
- `config/`    the stage configs, the glimpse's recipe keys, recipe parsing and its parse-time checks
- `runs/`      what a run leaves behind: its card (`glimpserl_run.json`) and exports
- `trainers/`  the TRL subclasses of each stage, their losses, rollouts and checkpoint hooks
- `eval/`      evaluation settings, the pruner comparison, held-out evaluation of a run, reports
- `train.py`   one linear main per stage (`glimpserl train RECIPE.yaml`)

The names most users need are importable from here (`from glimpserl.rl import load_exported`); they load on first
use, so importing the package stays cheap.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(`__getattr__`, `__all__`) for `package`: `exports` maps a module relative to it to the space-separated names
    it provides, each imported from there on first use."""
    source = {name: module for module, names in exports.items() for name in names.split()}

    def __getattr__(name: str):
        if name not in source:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(source[name], package), name)

    return __getattr__, sorted(source)


EXPORTS = {
    ".data": "DataConfig load_vqa conversation_dataset",
    ".data.synth": "write_synth",
    ".config": "parse_recipe ModelArguments VIPTrainingConfig GlimpseGRPOConfig VLMSFTConfig",
    ".trainers": "VIPTrainer GlimpseGRPOTrainer VLMSFTTrainer",
    ".runs": "export_run load_exported",
    ".eval": "EvalSettings run_eval",
}
__getattr__, __all__ = lazy_exports(__name__, EXPORTS)
