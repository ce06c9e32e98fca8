"""The tiny Qwen3-VL through every stage on the real TRL trainers (what trains, what stays), then through `glimpserl`:
stage sft -> stage 1 -> stage 2 (LoRA, and full) -> export (LoRA and merged) -> eval with every pruner -> visualize."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import batch, changed, image, snapshot

from glimpserl.cli import main
from glimpserl.models import GlimpseConfig, add_glimpse
from glimpserl.models.loading import load_processor
from glimpserl.models.tiny import build_tiny_model
from glimpserl.rl.config.stages import GlimpseGRPOConfig, VIPTrainingConfig, VLMSFTConfig
from glimpserl.rl.data import DataConfig, conversation_dataset, load_vqa
from glimpserl.rl.data.synth import write_synth
from glimpserl.rl.runs.export import load_exported
from glimpserl.rl.trainers.grpo import GlimpseGRPOTrainer
from glimpserl.rl.trainers.sft import VLMSFTTrainer
from glimpserl.rl.trainers.vip import VIPTrainer

ROOT = Path(__file__).resolve().parents[1]
FAMILY = "qwen3_vl"
MODEL = "builtin:tiny-qwen3_vl"
SMALL_GLIMPSE = dict(layer=0, vip_hidden_size=32, vip_intermediate_size=64, vip_num_blocks=1, vip_num_heads=2)
"""K = 0: the layer-1 DeepStack injection happens after the cut, on the kept tokens."""
COMMON = dict(use_cpu=True, save_strategy="no", report_to="none", logging_steps=1)
PIXELS = 128 * 128
"""128 px images: 4 x 4 visual tokens of 32 px."""


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("synth"), n_train=8, n_test=4, image_size=128, seed=0)


@pytest.fixture(scope="module")
def dataset(synth):
    config = DataConfig(dataset=str(synth / "train.jsonl"), question_template="{question}")
    rows, _ = load_vqa(config)
    return conversation_dataset(rows, config)


def test_stage1_trains_only_the_glimpse(dataset, tmp_path):
    model = add_glimpse(build_tiny_model(FAMILY), GlimpseConfig(**SMALL_GLIMPSE))
    config = VIPTrainingConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, box_weight=1.0,
        warmup_steps=0, **COMMON,
    )  # fmt: skip
    trainer = VIPTrainer(model, config, dataset, load_processor(MODEL))
    before = snapshot(trainer.model)
    trainer.train()
    changed_names = changed(trainer.model, before)
    assert changed_names and all(".glimpse." in n for n in changed_names)
    assert {"loss_kl", "loss_sparsity", "loss_box", "keep_ratio", "box_recall"} <= set(trainer.state.log_history[0])


@pytest.mark.parametrize("use_lora", [True, False], ids=["lora", "full"])
def test_stage2_trains_the_policy_and_the_vip_on_sampled_masks(dataset, tmp_path, use_lora):
    """LoRA with a KL term (the reference is the base under the adapter), and full fine-tuning (a full run's KL
    reference is reloaded by name: the 2-process ZeRO-3 test runs it through a recipe)."""
    model = add_glimpse(build_tiny_model(FAMILY), GlimpseConfig(**SMALL_GLIMPSE))
    config = GlimpseGRPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=4, learning_rate=1e-2, beta=0.04 if use_lora else 0.0, use_lora=use_lora, lora_r=4,
        lora_alpha=8,
        mask_policy="sample", rewards=[{"name": "exact_match", "weight": 1.0}, {"name": "prune_ratio", "weight": 1.0}],
        **COMMON,
    )  # fmt: skip
    trainer = GlimpseGRPOTrainer(model, config, dataset, load_processor(MODEL))
    before = snapshot(trainer.model)
    trainer.train()
    changed_names = changed(trainer.model, before)
    assert any(".glimpse." in n for n in changed_names)
    if use_lora:
        assert any("lora_" in n for n in changed_names) and all(
            "lora_" in n or ".glimpse." in n for n in changed_names
        )
    else:
        assert any(".language_model.layers." in n for n in changed_names)
        assert not any(
            ".visual." in n for n in changed_names
        )  # the vision side (DeepStack mergers included) stays frozen
    logs = [h for h in trainer.state.log_history if "glimpse/prune_ratio" in h]
    assert len(logs) == 2 and all(0.0 <= h["glimpse/prune_ratio"] <= 1.0 for h in logs)


def test_stage_sft_trains_the_decoder_and_keeps_the_vision_side_frozen(dataset, tmp_path):
    config = VLMSFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=0,
        use_lora=False, freeze_vision=True, **COMMON,
    )  # fmt: skip
    trainer = VLMSFTTrainer(build_tiny_model(FAMILY), config, dataset, load_processor(MODEL))
    before = snapshot(trainer.model)
    trainer.train()
    changed_names = changed(trainer.model, before)
    assert any(".language_model." in n for n in changed_names) and not any(".visual." in n for n in changed_names)
    labels = trainer.data_collator([dataset[0]])["labels"][0]
    tokenizer = trainer.processing_class.tokenizer
    assert tokenizer.decode(labels[labels != -100]) == dataset[0]["answer"][0] + tokenizer.eos_token


def _recipe(source: str, dest: Path, synth: Path, **overrides) -> Path:
    data = yaml.safe_load((ROOT / source).read_text())
    data.update(dataset=str(synth / "train.jsonl"), max_pixels=PIXELS, **overrides)
    if "eval_dataset" in data:
        data["eval_dataset"] = str(synth / "test.jsonl")
    dest.write_text(yaml.safe_dump(data))
    return dest


@pytest.mark.slow
def test_every_stage_export_eval_and_visualize_through_the_cli(synth, tmp_path, capsys):
    quick = dict(max_steps=2, save_steps=2, logging_steps=1, per_device_train_batch_size=4)
    sft = dict(
        stage="sft", model_name_or_path=MODEL, dataset=str(synth / "train.jsonl"), max_pixels=PIXELS, use_lora=True,
        lora_r=4, lora_alpha=8, report_to="none", question_template="{question}", **quick,
    )  # fmt: skip
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(sft))
    assert main(["train", str(tmp_path / "sft.yaml"), "--output_dir", str(tmp_path / "sft")]) == 0
    assert (tmp_path / "sft" / "adapter_model.safetensors").is_file()

    vip = _recipe("recipes/tiny/qwen3_vl_vip.yaml", tmp_path / "vip.yaml", synth, **quick)
    assert main(["train", str(vip), "--output_dir", str(tmp_path / "vip")]) == 0
    stage1 = json.loads((tmp_path / "vip" / "eval_results.json").read_text())
    assert stage1["global_step"] == 2 and stage1["eval"]["samples"] == 4

    grpo = _recipe("recipes/tiny/qwen3_vl_grpo.yaml", tmp_path / "grpo.yaml", synth, **quick)
    argv = ["train", str(grpo), "--output_dir", str(tmp_path / "grpo"), "--glimpse_init", str(tmp_path / "vip")]
    assert main([*argv, "--max_completion_length", "4"]) == 0
    assert (tmp_path / "grpo" / "adapter_model.safetensors").is_file()

    assert main(["export", str(tmp_path / "grpo"), "--out", str(tmp_path / "lora")]) == 0
    assert main(["export", str(tmp_path / "grpo"), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    capsys.readouterr()
    adapter_model, processor = load_exported(tmp_path / "lora")
    merged_model, _ = load_exported(tmp_path / "merged")
    assert type(merged_model).__name__ == "Qwen3VLForConditionalGeneration"
    inputs = batch(processor, ["What colour is the square?"], [[image(128, 128, 0)]])
    with torch.no_grad():
        a, m = adapter_model(**inputs), merged_model(**inputs)
    assert (a.logits - m.logits).abs().max() <= 1e-5 and torch.equal(a.glimpse.keep_mask, m.glimpse.keep_mask)

    out = tmp_path / "eval.json"
    argv = ["eval", "--run", str(tmp_path / "merged"), "--dataset", str(synth / "test.jsonl"), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    rows = {r["pruner"]: r for r in json.loads(out.read_text())["results"]}
    expected = {"none", "glimpse", "gprune", "fastv", "divprune", "cdpruner", "random", "downsample"}
    assert expected <= {name.split("@")[0] for name in rows}
    assert rows["none"]["visual_tokens"] == 16 and rows["none"]["keep_ratio"] == 1.0

    png = tmp_path / "vis.png"
    # No --model: visualize takes the glimpse run's base model (tiny Qwen3-VL) from its run card.
    argv = ["visualize", "--glimpse", str(tmp_path / "vip"), "--out", str(png), "--max-new-tokens", "2"]
    assert main([*argv, "--max-keep-ratio", "0.25"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(stdout[stdout.index("{") :])
    assert report["kept_tokens"] == int(0.25 * report["visual_tokens"]) and png.is_file()
