"""stage sft on the real TRL SFTTrainer: what trains (full, frozen vision, LoRA), the answer-only loss, the held-out
answer check with its question-only prior, and the recipe path end to end."""

import json
from pathlib import Path

import pytest
import torch

from glimpserl.models.loading import load_processor
from glimpserl.models.tiny import build_tiny_model
from glimpserl.rl.config.stages import VLMSFTConfig
from glimpserl.rl.data import DataConfig, conversation_dataset, load_vqa
from glimpserl.rl.data.synth import write_synth
from glimpserl.rl.eval.report import question_prior
from glimpserl.rl.trainers.sft import VLMSFTTrainer

ROOT = Path(__file__).resolve().parents[1]
PIXELS = 112 * 112


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("shapes"), 8, 4, 112, 0, task="shapes", n_val=2)


def _trainer(shapes_dir, output_dir, **overrides):
    data = DataConfig(dataset=str(shapes_dir / "train.jsonl"), max_pixels=PIXELS, question_template="{question}")
    dataset, _ = load_vqa(data)
    config = dict(
        output_dir=str(output_dir),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        warmup_steps=0,
        use_lora=False,
        freeze_vision=False,
    )
    config.update(overrides)
    processor = load_processor("builtin:tiny-qwen2_5_vl", max_pixels=PIXELS)
    model = build_tiny_model("qwen2_5_vl", seed=0)
    return VLMSFTTrainer(model, VLMSFTConfig(**config), conversation_dataset(dataset, data), processor)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_full_tuning_trains_language_model_and_vision_on_the_answers(shapes_dir, tmp_path):
    trainer = _trainer(shapes_dir, tmp_path / "full")
    before = _snapshot(trainer.model)
    trainer.train()
    after = dict(trainer.model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(p.detach(), before[n])}
    assert any(".visual." in n for n in changed) and any(".language_model." in n for n in changed)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(torch.isfinite(torch.tensor(h["loss"])) for h in logged)


def test_labels_cover_the_answer_and_its_end_of_turn_only(shapes_dir, tmp_path):
    trainer = _trainer(shapes_dir, tmp_path / "labels")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    tokenizer = trainer.processing_class.tokenizer
    for row, labels in zip([trainer.train_dataset[i] for i in range(2)], batch["labels"]):
        answer = tokenizer.decode(labels[labels != -100])
        assert answer == row["answer"][0] + tokenizer.eos_token


def test_frozen_vision_and_lora_leave_what_they_should_alone(shapes_dir, tmp_path):
    trainer = _trainer(shapes_dir, tmp_path / "frozen", freeze_vision=True)
    before = _snapshot(trainer.model)
    trainer.train()
    for name, p in trainer.model.named_parameters():
        if ".visual." in name:
            assert torch.equal(p.detach(), before[name]), name
    lora = _trainer(shapes_dir, tmp_path / "lora", use_lora=True, lora_r=4, lora_alpha=8)
    base = {n: p.detach().clone() for n, p in lora.model.named_parameters() if "lora_" not in n}
    lora.train()
    trained = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n and ".visual." not in n for n in trained)
    assert all(torch.equal(p.detach(), base[n]) for n, p in lora.model.named_parameters() if "lora_" not in n)


def test_question_prior_by_hand():
    train = [
        {"question": "What colour is the square?", "answer": ["red"]},
        {"question": "What colour is the square?", "answer": ["red"]},
        {"question": "What colour is the square?", "answer": ["blue"]},
        {"question": "What shape is the red object?", "answer": ["circle"]},
    ]
    held_out = [
        {"question": "What colour is the square?", "answer": ["red"], "kind": "colour"},  # prior says red: hit
        {"question": "What colour is the square?", "answer": ["green"], "kind": "colour"},  # miss
        {"question": "What shape is the red object?", "answer": ["Circle"], "kind": "shape"},  # hit (case-blind)
        {"question": "What shape is the blue object?", "answer": ["square"], "kind": "shape"},  # unseen: overall mode
    ]
    prior = question_prior(train, held_out)
    assert prior["exact_match"] == pytest.approx(2 / 4)
    assert prior["by_group"] == {"colour": 0.5, "shape": 0.5}


@pytest.mark.slow
def test_sft_recipe_end_to_end_writes_model_card_and_answer_report(tmp_path, monkeypatch):
    """The shipped mini sft recipe, shortened: builtin:shapes data with its curriculum, the saved model reloads, and
    eval_results.json holds the held-out exact match per kind next to the question-only prior."""
    from glimpserl.models.loading import load_model
    from glimpserl.rl import train

    monkeypatch.setenv("GLIMPSERL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    argv = [str(ROOT / "recipes/mini/sft.yaml"), "--output_dir", str(out), "--max_steps", "2", "--save_strategy", "no"]
    argv += ["--synth_train", "16", "--synth_curriculum", "8", "--synth_val", "2", "--synth_test", "4"]
    argv += ["--synth_image_size", "112", "--min_pixels", "12544", "--max_pixels", "12544"]
    assert train.main(argv) == 0
    report = json.loads((out / "eval_results.json").read_text())["eval"]
    assert report["rows"] == 4 and set(report["exact_match_by_kind"]) == {"colour", "shape"}
    assert 0.0 <= report["question_only_prior"] <= 1.0
    card = json.loads((out / "glimpserl_run.json").read_text())
    assert card["stage"] == "sft" and card["data"]["question_template"] == "{question}"
    reloaded = load_model(str(out))
    assert type(reloaded).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_collating_answers_leaves_the_saved_processor_untouched(shapes_dir, tmp_path):
    """Answers are cut to max_answer_tokens by hand: a tokenizer call with truncation would leave its max_length in
    the fast tokenizer's backend, and every processor saved afterwards (checkpoints, runs) would cut prompts there."""
    from PIL import Image

    from glimpserl.rl.data.collate import GlimpseCollator

    trainer = _trainer(shapes_dir, tmp_path / "collate")
    processor = trainer.processing_class
    batch = GlimpseCollator(processor, max_answer_tokens=1)([trainer.train_dataset[i] for i in range(2)])
    assert int((batch["labels"] != -100).sum(1).max()) == 1
    processor.save_pretrained(tmp_path / "saved")
    reloaded = load_processor(str(tmp_path / "saved"))
    text = reloaded.apply_chat_template(trainer.train_dataset[0]["prompt"], add_generation_prompt=True)
    encoded = reloaded(text=[text], images=[Image.new("RGB", (112, 112))], return_tensors="pt")
    assert int((encoded["input_ids"] == reloaded.image_token_id).sum()) == 16
