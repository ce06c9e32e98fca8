"""Turn a finished `stage: sft` run into a checkpoint that ships with the package (`assets/NAME`, loadable as
`builtin:NAME`), with a card that records how it was made and how well it answers held-out questions.

    python scripts/ship.py outputs/mini-sft --name mini-qwen2_5_vl --recipe recipes/mini/sft.yaml

Copies the weights, model config and processor files (nothing else: no optimizer state, no checkpoints) and writes
`card.json`: the recipe and its launch command, seeds, training steps and time, and the run's held-out exact match
(overall and per question kind) beside the question-only prior (and, for the places task, the random-object
prior). The folder is staged and published the way
`glimpserl export` publishes (a kill midway leaves the previous folder in place). A maintainer's tool: nothing in the
package imports it; tests/test_ship.py runs it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from glimpserl.models.loading import ASSETS
from glimpserl.rl.runs.card import RUN_CARD
from glimpserl.rl.runs.export import clear_leftovers, staged_publish

FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def ship(run_dir: str | Path, name: str, recipe: str, assets: Path = ASSETS) -> Path:
    run = Path(run_dir)
    results_path = run / "eval_results.json"
    if not results_path.is_file():
        raise FileNotFoundError(f"{results_path} is missing: ship a finished sft run (it writes eval_results.json).")
    results = json.loads(results_path.read_text())
    card = json.loads((run / RUN_CARD).read_text())
    if card.get("stage") != "sft":
        raise ValueError(f"{run} is a {card.get('stage')!r} run; only sft runs (a whole model) ship as a checkpoint.")
    held_out = results["eval"]
    data = Path(card["data"]["dataset"]).parent
    missing = [file for file in FILES if not (run / file).is_file()]
    if missing:
        raise FileNotFoundError(f"{run} lacks {', '.join(missing)}: ship the folder a finished sft run wrote.")
    out = assets / name
    clear_leftovers(out)
    with staged_publish(out) as staging:
        for file in FILES:
            shutil.copy2(run / file, staging / file)
        _without_call_state(staging / "tokenizer.json")
        record = _card(name, recipe, card, results, held_out) | _task_priors(data)
        (staging / "card.json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def _card(name: str, recipe: str, card: dict, results: dict, held_out: dict) -> dict:
    """What card.json records: how the model was made and how well it answers held-out questions."""
    return {
        "name": f"builtin:{name}",
        "recipe": recipe,
        "command": f"glimpserl train {recipe}",
        "seed": card["seed"],
        "data": card["data"]["dataset"].split("/")[-2],
        "global_step": results["global_step"],
        "train_rows": results["train_rows"],
        "train_minutes": round(results["train_seconds"] / 60, 1) if results.get("train_seconds") else None,
        "held_out": {
            "split": "test",
            "rows": held_out["rows"],
            "exact_match": held_out["exact_match"],
            "exact_match_by_kind": held_out["exact_match_by_kind"],
            "question_only_prior": held_out["question_only_prior"],
            "question_only_prior_by_kind": held_out["question_only_prior_by_kind"],
        },
    }


def _task_priors(data: Path) -> dict:
    """The places task's random-object prior on the held-out split (the score of reading some object, not the one
    asked about), regenerated from the set's dataset.json; {} for other sets."""
    described = data / "dataset.json"
    if not described.is_file():
        return {}
    info = json.loads(described.read_text())
    if info.get("task") != "places":
        return {}
    from glimpserl.rl.data.synth.places import make_places_sample, random_object_prior

    size = (info["image_size"]["width"], info["image_size"]["height"])
    samples = (make_places_sample(info["seed"], "test", i, size) for i in range(info["counts"]["test"]))
    prior = random_object_prior(samples)
    return {"random_object_prior": prior["exact_match"], "random_object_prior_by_kind": prior["by_kind"]}


def _without_call_state(path: Path) -> None:
    """Drop the truncation / padding a fast tokenizer keeps from its last call: a shipped processor must not cut or
    pad prompts by what some earlier call asked for."""
    tokenizer = json.loads(path.read_text())
    tokenizer["truncation"] = tokenizer["padding"] = None
    path.write_text(json.dumps(tokenizer, ensure_ascii=False))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/ship.py", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="A finished stage-sft run folder (output_dir).")
    p.add_argument("--name", required=True, help="Folder name under assets/ (the model loads as builtin:NAME).")
    p.add_argument("--recipe", required=True, help="The recipe that made the run (recorded in the card).")
    args = p.parse_args(argv)
    out = ship(args.run_dir, args.name, args.recipe)
    print(json.dumps(json.loads((out / "card.json").read_text()), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
