"""scripts/ship.py, the maintainer's tool that packages a finished stage-sft run as a shipped model (assets/NAME)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ship_module():
    spec = importlib.util.spec_from_file_location("ship", ROOT / "scripts" / "ship.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sft_run(folder: Path, ship) -> Path:
    folder.mkdir()
    for name in ship.FILES:
        (folder / name).write_text("{}" if name.endswith(".json") else "weights")
    (folder / "tokenizer.json").write_text(json.dumps({"truncation": {"max_length": 4}, "padding": {"x": 1}}))
    (folder / "glimpserl_run.json").write_text(
        json.dumps({"stage": "sft", "seed": 3, "data": {"dataset": "/cache/shapes-v2-seed0/train.jsonl"}})
    )
    held_out = {"rows": 8, "exact_match": 1.0, "exact_match_by_kind": {"colour": 1.0}}
    held_out |= {"question_only_prior": 0.2, "question_only_prior_by_kind": {"colour": 0.2}}
    results = {"global_step": 10, "train_rows": 160, "train_seconds": 90.0, "eval": held_out}
    (folder / "eval_results.json").write_text(json.dumps(results))
    return folder


def test_ship_packages_weights_processor_and_card(tmp_path):
    ship = _ship_module()
    run = _sft_run(tmp_path / "run", ship)
    assets = tmp_path / "assets"
    (assets / "mini").mkdir(parents=True)
    (assets / "mini" / "stale.txt").write_text("from the previous version")
    out = ship.ship(run, "mini", "recipes/mini/sft.yaml", assets=assets)
    assert sorted(p.name for p in out.iterdir()) == sorted([*ship.FILES, "card.json"])
    card = json.loads((out / "card.json").read_text())
    assert card["name"] == "builtin:mini" and card["command"] == "glimpserl train recipes/mini/sft.yaml"
    assert (card["seed"], card["data"], card["train_minutes"]) == (3, "shapes-v2-seed0", 1.5)
    assert card["held_out"]["exact_match"] == 1.0 and card["held_out"]["question_only_prior"] == 0.2
    tokenizer = json.loads((out / "tokenizer.json").read_text())
    assert tokenizer["truncation"] is None and tokenizer["padding"] is None
    assert not [p for p in assets.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_ship_refuses_what_is_not_a_finished_sft_run(tmp_path):
    ship = _ship_module()
    run = _sft_run(tmp_path / "run", ship)
    card = json.loads((run / "glimpserl_run.json").read_text())
    (run / "glimpserl_run.json").write_text(json.dumps({**card, "stage": "vip"}))
    with pytest.raises(ValueError, match="only sft runs"):
        ship.ship(run, "mini", "recipes/mini/sft.yaml", assets=tmp_path / "assets")
    (run / "glimpserl_run.json").write_text(json.dumps(card))
    (run / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        ship.ship(run, "mini", "recipes/mini/sft.yaml", assets=tmp_path / "assets")
    assert not (tmp_path / "assets" / "mini").exists()


def test_ship_records_the_random_object_prior_of_a_places_run(tmp_path):
    """On the places task the card also records what reading a random object of the board is worth (the prior a
    model that does not follow the question's place would reach), from the run's own held-out split."""
    from glimpserl.rl.data.synth.places import make_places_sample, random_object_prior
    from glimpserl.rl.data.synth.writer import write_synth

    ship = _ship_module()
    data = write_synth(tmp_path / "places", 3, 6, 288, seed=4, task="places")
    run = _sft_run(tmp_path / "run", ship)
    card = json.loads((run / "glimpserl_run.json").read_text())
    card["data"]["dataset"] = str(data / "train.jsonl")
    (run / "glimpserl_run.json").write_text(json.dumps(card))
    out = ship.ship(run, "mini", "recipes/mini/sft.yaml", assets=tmp_path / "assets")
    shipped = json.loads((out / "card.json").read_text())
    expected = random_object_prior(make_places_sample(4, "test", i, 288) for i in range(6))
    assert shipped["random_object_prior"] == pytest.approx(expected["exact_match"])
    assert set(shipped["random_object_prior_by_kind"]) == {"colour", "majority"}
    assert "random_object_prior" not in json.loads(
        (ship.ship(_sft_run(tmp_path / "r2", ship), "m2", "x", assets=tmp_path / "a2") / "card.json").read_text()
    )
