"""`glimpserl_run.json`: the model, data and prompt settings a training run used, written into its output folder.

`glimpserl eval` (and the exports of a run) read it back so that evaluation asks its questions the way the run
trained: same prompt template and system prompt, same pixel bounds, same held-out data.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..data.settings import PromptArguments

RUN_CARD = "glimpserl_run.json"
PROMPT_KEYS = tuple(f.name for f in dataclasses.fields(PromptArguments))
"""The prompt settings a card records, which `glimpserl eval` follows: PromptArguments' fields."""


def write_run_card(stage: str, model_args, data_args, eval_args, train_args) -> None:
    """Write the card of a run into train_args.output_dir (main process only)."""
    if not train_args.should_save:
        return
    data = dataclasses.asdict(data_args)
    card = {
        "stage": stage,
        "model_name_or_path": model_args.model_name_or_path,
        # The template in effect, not None: eval must ask the way this run trained, whatever the default is later.
        "data": {**{key: data[key] for key in ("dataset", *PROMPT_KEYS)}, "question_template": data_args.template},
        "eval_dataset": eval_args.dataset if eval_args is not None else None,
        "seed": train_args.seed,
    }
    folder = Path(train_args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_CARD).write_text(json.dumps(card, indent=2) + "\n")


def find_run_card(folder: str | Path) -> Path | None:
    """The card of a run folder, an export of it, or one of its checkpoint-N folders (the card sits in the run)."""
    folder = Path(folder)
    for candidate in (folder / RUN_CARD, folder.parent / RUN_CARD):
        if candidate.is_file():
            return candidate
    return None


def read_run_card(folder: str | Path) -> dict | None:
    path = find_run_card(folder)
    if path is None:
        return None
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); delete it or re-run the training to rewrite it."
        ) from None
    if not isinstance(card, dict) or not isinstance(card.get("data"), dict):
        raise ValueError(f"{path} is not a glimpserl run card (no 'data' mapping); delete it or re-run the training.")
    return card
