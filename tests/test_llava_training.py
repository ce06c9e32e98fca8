"""The tiny LLaVA through every stage on the real TRL trainers (what trains, what stays), then the recipes end to end:
stage 1 -> stage 2 -> export (LoRA and merged) -> eval, each through `glimpserl`."""

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
MODEL = "builtin:tiny-llava"
SMALL_GLIMPSE = dict(layer=2, vip_hidden_size=32, vip_intermediate_size=64, vip_num_blocks=1, vip_num_heads=2)
COMMON = dict(use_cpu=True, save_strategy="no", report_to="none", logging_steps=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("synth"), n_train=8, n_test=4, image_size=112, seed=0)


@pytest.fixture(scope="module")
def dataset(synth):
    config = DataConfig(dataset=str(synth / "train.jsonl"), question_template="{question}")
    rows, _ = load_vqa(config)
    return conversation_dataset(rows, config)


def test_stage1_trains_only_the_glimpse_on_llava(dataset, tmp_path):
    model = add_glimpse(build_tiny_model("llava"), GlimpseConfig(**SMALL_GLIMPSE))
    config = VIPTrainingConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, box_weight=1.0,
        warmup_steps=0, **COMMON,
    )  # fmt: skip
    trainer = VIPTrainer(model, config, dataset, load_processor(MODEL))
    before = snapshot(trainer.model)
    trainer.train()
    changed_names = changed(trainer.model, before)
    assert changed_names and all(".glimpse." in n for n in changed_names)
    logged = trainer.state.log_history[0]
    assert {"loss_kl", "loss_sparsity", "loss_box", "keep_ratio", "box_recall"} <= set(logged)


def test_stage2_trains_lora_and_the_vip_on_sampled_masks_on_llava(dataset, tmp_path):
    model = add_glimpse(build_tiny_model("llava"), GlimpseConfig(**SMALL_GLIMPSE))
    config = GlimpseGRPOConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, num_generations=4,
        max_completion_length=4, learning_rate=1e-2, beta=0.04, lora_r=4, lora_alpha=8, mask_policy="sample",
        rewards=[{"name": "exact_match", "weight": 1.0}, {"name": "prune_ratio", "weight": 1.0}], **COMMON,
    )  # fmt: skip
    trainer = GlimpseGRPOTrainer(model, config, dataset, load_processor(MODEL))
    before = snapshot(trainer.model)
    trainer.train()
    changed_names = changed(trainer.model, before)
    assert any("lora_" in n for n in changed_names) and any(".glimpse." in n for n in changed_names)
    assert all("lora_" in n or ".glimpse." in n for n in changed_names)  # the base stays as loaded
    logs = [h for h in trainer.state.log_history if "glimpse/prune_ratio" in h]
    assert len(logs) == 2 and all(0.0 <= h["glimpse/prune_ratio"] <= 1.0 for h in logs)
    assert all("glimpse/vip_pg_loss" in h and "kl" in h for h in logs)


def test_stage_sft_on_llava_keeps_a_frozen_vision_tower(dataset, tmp_path):
    config = VLMSFTConfig(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, warmup_steps=0,
        use_lora=False, freeze_vision=True, **COMMON,
    )  # fmt: skip
    trainer = VLMSFTTrainer(build_tiny_model("llava"), config, dataset, load_processor(MODEL))
    before = snapshot(trainer.model)
    trainer.train()
    changed_names = changed(trainer.model, before)
    assert any(".language_model." in n for n in changed_names)
    assert not any(".vision_tower." in n or ".multi_modal_projector." in n for n in changed_names)
    labels = trainer.data_collator([dataset[0]])["labels"][0]
    tokenizer = trainer.processing_class.tokenizer
    assert tokenizer.decode(labels[labels != -100]) == dataset[0]["answer"][0] + tokenizer.eos_token


def _recipe(source: str, dest: Path, synth: Path, **overrides) -> Path:
    data = yaml.safe_load((ROOT / source).read_text())
    data.update(dataset=str(synth / "train.jsonl"), eval_dataset=str(synth / "test.jsonl"), **overrides)
    dest.write_text(yaml.safe_dump(data))
    return dest


@pytest.mark.slow
def test_llava_recipes_stage1_stage2_export_and_eval_through_the_cli(synth, tmp_path, capsys):
    quick = dict(save_steps=2, logging_steps=1, per_device_train_batch_size=4)
    vip = _recipe("recipes/tiny/llava_vip.yaml", tmp_path / "vip.yaml", synth, max_steps=2, **quick)
    assert main(["train", str(vip), "--output_dir", str(tmp_path / "vip")]) == 0
    stage1 = json.loads((tmp_path / "vip" / "eval_results.json").read_text())
    assert stage1["global_step"] == 2 and stage1["eval"]["samples"] == 4
    assert _glimpse_config(tmp_path / "vip")["readout"] == "log_softmax"

    grpo = _recipe("recipes/tiny/llava_grpo.yaml", tmp_path / "grpo.yaml", synth, max_steps=2, **quick)
    argv = ["train", str(grpo), "--output_dir", str(tmp_path / "grpo"), "--glimpse_init", str(tmp_path / "vip")]
    assert main([*argv, "--max_completion_length", "4"]) == 0
    assert (tmp_path / "grpo" / "adapter_model.safetensors").is_file()

    assert main(["export", str(tmp_path / "grpo"), "--out", str(tmp_path / "lora")]) == 0
    assert main(["export", str(tmp_path / "grpo"), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    capsys.readouterr()
    adapter_model, processor = load_exported(tmp_path / "lora")
    merged_model, _ = load_exported(tmp_path / "merged")
    inputs = batch(processor, ["What colour is the square?"], [[image(112, 112, 0)]])
    with torch.no_grad():
        a, m = adapter_model(**inputs), merged_model(**inputs)
    assert (a.logits - m.logits).abs().max() <= 1e-5 and torch.equal(a.glimpse.keep_mask, m.glimpse.keep_mask)

    out = tmp_path / "eval.json"
    argv = ["eval", "--run", str(tmp_path / "merged"), "--dataset", str(synth / "test.jsonl"), "--out", str(out)]
    assert main([*argv, "--pruners", "glimpse,visionzip,gprune,none", "--max-new-tokens", "2"]) == 0
    rows = {r["pruner"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"glimpse", "visionzip", "gprune", "none"}
    assert rows["none"]["visual_tokens"] == 64 and rows["none"]["keep_ratio"] == 1.0
    assert rows["visionzip"]["kept_tokens"] == pytest.approx(rows["glimpse"]["keep_ratio"] * 64, abs=1)


def _glimpse_config(folder: Path) -> dict:
    return json.loads((folder / "glimpse_config.json").read_text())["config"]


def test_eval_settings_follow_the_family(synth):
    """VisionZip runs on LLaVA and not on Qwen; downsampling leaves LLaVA's default list and is refused when asked."""
    from glimpserl.rl.eval.compare import resolve_settings
    from glimpserl.rl.eval.settings import EvalSettings

    def settings(**kwargs):
        return resolve_settings(EvalSettings(**kwargs))

    llava = settings(model=MODEL, dataset=str(synth / "test.jsonl"))
    assert "downsample" not in llava.pruners and "gprune" in llava.pruners
    assert settings(model=MODEL, dataset=str(synth / "test.jsonl"), pruners="visionzip").pruners == ["visionzip"]
    with pytest.raises(ValueError, match="same number of visual tokens"):
        settings(model=MODEL, dataset=str(synth / "test.jsonl"), pruners="downsample")
    with pytest.raises(ValueError, match="needs vision-encoder attention, which the qwen2_5_vl model family"):
        settings(model="builtin:tiny-qwen2_5_vl", dataset=str(synth / "test.jsonl"), pruners="visionzip")


def test_pixel_bounds_on_a_llava_recipe_fail_at_parse_time(tmp_path, synth):
    from glimpserl.rl.config.recipe import parse_recipe

    recipe = _recipe("recipes/tiny/llava_vip.yaml", tmp_path / "r.yaml", synth, max_pixels=12544)
    with pytest.raises(ValueError, match=r"max_pixels: builtin:tiny-llava is a llava model.*remove min_pixels"):
        parse_recipe(recipe)


def test_visualize_draws_the_llava_token_grid(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "vis.png"
    argv = ["visualize", "--model", MODEL, "--out", str(out), "--max-keep-ratio", "0.25", "--max-new-tokens", "2"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    report = json.loads(stdout[stdout.index("{") :])
    assert (report["visual_tokens"], report["kept_tokens"]) == (64, 16)
    with Image.open(out) as png:
        assert png.width == 448 and png.height > 448
