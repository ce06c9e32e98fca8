"""Stage 1 under a real `accelerate launch` with 2 CPU processes and the shipped DeepSpeed configs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_recipe
from safetensors.torch import load_file

from glimpserl.models import glimpse_module, load_glimpse
from glimpserl.models.tiny import build_tiny_model
from glimpserl.rl.data.synth import write_synth

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    data = write_synth(folder / "synth", n_train=8, n_test=4, image_size=112, seed=0)
    return tiny_recipe(ROOT / "recipes/tiny/vip.yaml", folder / "recipe.yaml", data)


def _launch(launch_config: str, recipe, out, *extra: str) -> subprocess.CompletedProcess:
    """`accelerate launch` with a shipped CPU config: 2 processes running `glimpserl train` for 2 steps."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions")),
    }
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "launch" / launch_config),
        "-m", "glimpserl.cli", "train", str(recipe), "--output_dir", str(out), "--max_steps", "2",
        "--save_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1", *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("launch_config", ["cpu_zero2.yaml", "cpu_zero3.yaml"])
def test_two_process_deepspeed_run_saves_loadable_glimpse(recipe, tmp_path, launch_config):
    out = tmp_path / "run"
    done = _launch(launch_config, recipe, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["global_step"] == 2 and results["eval"]["samples"] == 4
    # Two processes with 2 samples each: 2 steps consume all 8 rows once.
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == pytest.approx(1.0)
    fresh = load_glimpse(build_tiny_model("qwen2_5_vl", seed=0), out)
    saved = load_file(str(out / "glimpse.safetensors"))
    for name, param in glimpse_module(fresh).state_dict().items():
        assert torch.equal(param, saved[name]), name
    assert all(t.numel() > 0 for t in saved.values())  # ZeRO-3 gathered the real tensors, not placeholders


@pytest.fixture(scope="module")
def grpo_recipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist_grpo")
    data = write_synth(folder / "synth", n_train=8, n_test=2, image_size=112, seed=0)
    return tiny_recipe(ROOT / "recipes/tiny/grpo.yaml", folder / "recipe.yaml", data)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launch_config", "extra"),
    [
        ("cpu_zero2.yaml", []),
        ("cpu_zero3.yaml", []),
        ("cpu_zero3.yaml", ["--use_lora", "false", "--beta", "0.04"]),
    ],
    ids=["zero2-lora", "zero3-lora", "zero3-full-beta"],
)
def test_two_process_grpo(grpo_recipe, tmp_path, launch_config, extra):
    out = tmp_path / "run"
    done = _launch(launch_config, grpo_recipe, out, "--num_generations", "2", *extra)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    weights = "model.safetensors" if "--use_lora" in extra else "adapter_model.safetensors"
    assert (out / weights).is_file() and (out / "glimpse.safetensors").is_file()
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    logs = [h for h in state["log_history"] if "glimpse/kept_tokens" in h]
    assert len(logs) == 2
    # Each rank sampled its own masks: the ranks ran different sequence lengths, and nobody hung.
    assert any(h["glimpse/kept_tokens_rank_spread"] > 0 for h in logs)
    if "--beta" in extra:
        assert all(h["kl"] >= 0 for h in logs)
    fresh = load_glimpse(build_tiny_model("qwen2_5_vl", seed=0), out)
    assert glimpse_module(fresh).config.layer == 2


@pytest.fixture(scope="module")
def llava_data(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("dist_llava") / "synth", n_train=8, n_test=4, image_size=112, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["vip", "grpo"])
def test_two_process_zero3_on_llava(llava_data, tmp_path, stage):
    """Both stages on the tiny LLaVA under 2-process ZeRO-3: partitioned CLIP + Llama, the glimpse gathered to save."""
    recipe = tiny_recipe(ROOT / f"recipes/tiny/llava_{stage}.yaml", tmp_path / "recipe.yaml", llava_data)
    out = tmp_path / "run"
    done = _launch("cpu_zero3.yaml", recipe, out, *(["--num_generations", "2"] if stage == "grpo" else []))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    if stage == "vip":
        assert json.loads((out / "eval_results.json").read_text())["eval"]["samples"] == 4
    else:
        assert (out / "adapter_model.safetensors").is_file()
        assert len([h for h in state["log_history"] if "glimpse/kept_tokens" in h]) == 2
    assert _saved_glimpse(out, "llava").config.readout == "log_softmax"  # the checkpoint's signature is LLaVA's


@pytest.fixture(scope="module")
def qwen3_data(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("dist_qwen3") / "synth", n_train=8, n_test=4, image_size=128, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "extra"),
    [("vip", []), ("grpo", ["--num_generations", "2", "--use_lora", "false", "--beta", "0.04"])],
    ids=["vip", "grpo-full-beta"],
)
def test_two_process_zero3_on_qwen3_vl(qwen3_data, tmp_path, stage, extra):
    """Both stages on the tiny Qwen3-VL under 2-process ZeRO-3: partitioned ViT, DeepStack mergers and Qwen3 decoder;
    stage 2 in full with a KL reference; the glimpse gathered to save."""
    recipe = tiny_recipe(ROOT / f"recipes/tiny/qwen3_vl_{stage}.yaml", tmp_path / "recipe.yaml", qwen3_data, 128 * 128)
    out = tmp_path / "run"
    done = _launch("cpu_zero3.yaml", recipe, out, *extra)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    if stage == "vip":
        assert json.loads((out / "eval_results.json").read_text())["eval"]["samples"] == 4
    else:
        assert (out / "model.safetensors").is_file()
        logs = [h for h in state["log_history"] if "glimpse/kept_tokens" in h]
        assert len(logs) == 2 and all(h["kl"] >= 0 for h in logs)
    _saved_glimpse(out, "qwen3_vl")  # the checkpoint's signature is Qwen3-VL's


def _saved_glimpse(out, family: str):
    """The run's saved glimpse loaded onto a fresh tiny `family` model: every tensor real (ZeRO-3 gathered them, not
    placeholders) and equal to the file."""
    fresh = load_glimpse(build_tiny_model(family, seed=0), out)
    saved = load_file(str(out / "glimpse.safetensors"))
    assert all(t.numel() > 0 for t in saved.values())
    for name, param in glimpse_module(fresh).state_dict().items():
        assert torch.equal(param, saved[name]), name
    return glimpse_module(fresh)
