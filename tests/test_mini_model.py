"""The shipped mini models still answer their tasks: held-out questions they were never trained on, well above what
the question alone is worth. Seconds, not a retraining."""

import json
from pathlib import Path

import pytest
import torch

from glimpserl.models.loading import SHIPPED_MODELS, load_model, load_processor
from glimpserl.rewards import build_reward
from glimpserl.rl.data.synth.places import make_places_sample, random_object_prior
from glimpserl.rl.data.synth.shapes import make_shapes_sample
from glimpserl.rl.eval.arms import encode
from glimpserl.rl.eval.report import question_prior

TASKS = {"builtin:mini-qwen2_5_vl": (make_shapes_sample, 336), "builtin:mini-qwen3_vl": (make_places_sample, 288)}
"""Each shipped model's task: its sample function and image side."""
ROWS = 64


def _samples(name: str, split: str, n: int, seed: int = 0):
    make, size = TASKS[name]
    return [make(seed, split, index, size) for index in range(n)]


def _rows(samples) -> list[dict]:
    rows = []
    for sample in samples:
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]
        rows.append(
            {"prompt": prompt, "images": [sample.image], "question": sample.question, "answer": [sample.answer]}
        )
    return rows


def _card(name: str) -> dict:
    return json.loads((SHIPPED_MODELS[name] / "card.json").read_text())


def test_every_shipped_model_has_a_task_test():
    assert set(SHIPPED_MODELS) == set(TASKS)


@pytest.mark.parametrize("name", TASKS)
def test_card_records_recipe_seed_and_held_out_accuracy(name):
    card = _card(name)
    root = Path(__file__).resolve().parents[1]
    assert card["name"] == name and (root / card["recipe"]).is_file()
    assert card["command"] == f"glimpserl train {card['recipe']}"
    held_out = card["held_out"]
    assert held_out["exact_match"] >= 0.9 and held_out["rows"] >= 500
    assert held_out["exact_match"] - held_out["question_only_prior"] >= 0.5


@pytest.mark.parametrize("name", TASKS)
def test_shipped_weights_answer_held_out_questions(name):
    model = load_model(name).eval()
    processor = load_processor(name)
    samples = _samples(name, "test", ROWS)
    rows = _rows(samples)
    with torch.no_grad():
        inputs = encode(processor, rows)
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    scores = build_reward("exact_match")(completions=texts, answer=[row["answer"] for row in rows])
    accuracy = sum(scores) / len(scores)
    prior = question_prior(_rows(_samples(name, "train", 512)), rows)["exact_match"]
    assert accuracy >= 0.85, list(zip(texts, [row["answer"] for row in rows]))[:8]
    assert accuracy >= prior + 0.5


def test_places_model_follows_the_question_not_a_random_object():
    """On the places task the model must read the object the question names: well above reading one at random."""
    name = "builtin:mini-qwen3_vl"
    card = _card(name)
    assert card["held_out"]["exact_match_by_kind"]["colour"] >= card["random_object_prior_by_kind"]["colour"] + 0.5
    assert card["held_out"]["exact_match"] >= card["random_object_prior"] + 0.3
    assert random_object_prior(_samples(name, "test", ROWS))["by_kind"]["colour"] < 0.5
