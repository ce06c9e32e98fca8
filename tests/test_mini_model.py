"""The shipped mini model (builtin:mini-qwen2_5_vl) still answers its task: held-out questions it was never trained
on, well above what the question alone is worth. Seconds, not a retraining."""

import json

import pytest
import torch

from glimpserl.models.loading import SHIPPED_MODELS, load_model, load_processor
from glimpserl.rewards import build_reward
from glimpserl.rl.data.synth.shapes import make_shapes_sample
from glimpserl.rl.eval.arms import encode
from glimpserl.rl.eval.report import question_prior

NAME = "builtin:mini-qwen2_5_vl"
ROWS = 64


@pytest.fixture(scope="module")
def card():
    return json.loads((SHIPPED_MODELS[NAME] / "card.json").read_text())


def _rows(split: str, n: int, seed: int = 0) -> list[dict]:
    rows = []
    for index in range(n):
        sample = make_shapes_sample(seed, split, index, 336)
        prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]
        rows.append(
            {"prompt": prompt, "images": [sample.image], "question": sample.question, "answer": [sample.answer]}
        )
        rows[-1]["kind"] = sample.kind
    return rows


def test_card_records_recipe_seed_and_held_out_accuracy(card):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert card["name"] == NAME and (root / card["recipe"]).is_file()
    assert card["command"] == f"glimpserl train {card['recipe']}"
    held_out = card["held_out"]
    assert held_out["exact_match"] >= 0.9 and held_out["rows"] >= 500
    assert held_out["exact_match"] - held_out["question_only_prior"] >= 0.5


def test_shipped_weights_answer_held_out_questions(card):
    model = load_model(NAME).eval()
    processor = load_processor(NAME)
    rows = _rows("test", ROWS)
    with torch.no_grad():
        inputs = encode(processor, rows)
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    scores = build_reward("exact_match")(completions=texts, answer=[row["answer"] for row in rows])
    accuracy = sum(scores) / len(scores)
    prior = question_prior(_rows("train", 512), rows)["exact_match"]
    assert accuracy >= 0.85, list(zip(texts, [row["answer"] for row in rows]))[:8]
    assert accuracy >= prior + 0.5
