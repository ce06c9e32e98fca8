"""Stage 1 on the real TRL trainer with the tiny model: what trains, what is saved, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import tiny_recipe

from glimpserl.models import GlimpseConfig, add_glimpse, glimpse_module, read_glimpse_config
from glimpserl.models.loading import load_processor
from glimpserl.models.tiny import build_tiny_model
from glimpserl.rl.config.stages import VIPTrainingConfig
from glimpserl.rl.data import DataConfig, conversation_dataset, load_vqa
from glimpserl.rl.data.synth import write_synth
from glimpserl.rl.trainers.checkpoint import COMPLETE_MARKER, last_complete_checkpoint
from glimpserl.rl.trainers.vip import VIPTrainer

ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS = 112 * 112


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("synth"), n_train=8, n_test=4, image_size=112, seed=0)


def _trainer(synth_dir, output_dir, glimpse=None, **overrides):
    data = DataConfig(dataset=str(synth_dir / "train.jsonl"), max_pixels=MAX_PIXELS)
    dataset, _ = load_vqa(data)
    shape = dict(layer=2, vip_hidden_size=32, vip_intermediate_size=64, vip_num_blocks=1, vip_num_heads=2)
    model = add_glimpse(build_tiny_model("qwen2_5_vl", seed=0), GlimpseConfig(**shape, **(glimpse or {})))
    config = dict(
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        box_weight=1.0,
        logging_steps=1,
        warmup_steps=0,
    )
    config.update(overrides)
    processor = load_processor("builtin:tiny-qwen2_5_vl", max_pixels=MAX_PIXELS)
    return VIPTrainer(model, VIPTrainingConfig(**config), conversation_dataset(dataset, data), processor)


def test_only_the_glimpse_trains_and_every_term_is_logged(synth_dir, tmp_path):
    trainer = _trainer(synth_dir, tmp_path / "run")
    glimpse_before = {n: p.detach().clone() for n, p in glimpse_module(trainer.model).named_parameters()}
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if ".glimpse." not in n}
    trainer.train()
    glimpse_after = dict(glimpse_module(trainer.model).named_parameters())
    assert any(not torch.equal(glimpse_before[n], glimpse_after[n]) for n in glimpse_before)
    for name, param in trainer.model.named_parameters():
        if ".glimpse." not in name:
            assert torch.equal(base_before[name], param), name
    logged = trainer.state.log_history[0]
    for key in ("loss_kl", "loss_sparsity", "loss_box", "keep_ratio", "keep_prob", "kept_tokens", "box_recall"):
        assert key in logged, key


def _first_box_loss(synth_dir, path, **box) -> float:
    """The box BCE of the first step (before any update), from the same glimpse initialisation every call."""
    torch.manual_seed(0)
    trainer = _trainer(synth_dir, path, max_steps=1, box_dice_weight=0.0, box_bce_weight=1.0, **box)
    trainer.train()
    return trainer.state.log_history[0]["loss_box"]


def test_box_pos_weight_reaches_the_box_loss(synth_dir, tmp_path):
    """The first step's box BCE grows with the weight of the box cells. The VIP starts by keeping nearly everything,
    so the box cells' own BCE is small and the difference modest."""
    plain, weighted = (_first_box_loss(synth_dir, tmp_path / f"pw{w}", box_pos_weight=w) for w in (1.0, 4.0))
    assert weighted > plain + 0.01


def test_box_focal_gamma_reaches_the_box_loss(synth_dir, tmp_path):
    """A focal exponent scales every cell's BCE by (1 - p_true)^gamma < 1, so the first step's box loss shrinks."""
    plain, focal = (_first_box_loss(synth_dir, tmp_path / f"fg{g}", box_focal_gamma=g) for g in (0.0, 2.0))
    assert 0 < focal < 0.9 * plain


def test_shared_and_separate_teacher_train_the_same_glimpse(synth_dir, tmp_path):
    """The teacher inside the student's forward gives the separate vanilla forward's losses step for step (float
    rounding apart), so the glimpse trains the same either way; and it runs the vision encoder once a step, not twice."""
    runs = {}
    for teacher in ("shared", "separate"):
        torch.manual_seed(0)  # the same glimpse initialisation for both
        trainer = _trainer(synth_dir, tmp_path / teacher, teacher_forward=teacher)
        visual = trainer.model.model.visual
        calls = []
        hook = visual.register_forward_hook(lambda *_, seen=calls: seen.append(1))
        trainer.train()
        hook.remove()
        logged = [h for h in trainer.state.log_history if "loss_kl" in h]
        runs[teacher] = (logged, len(calls), dict(glimpse_module(trainer.model).named_parameters()))
    (shared, shared_calls, shared_w), (separate, separate_calls, separate_w) = runs["shared"], runs["separate"]
    assert len(shared) == len(separate) == 3
    for a, b in zip(shared, separate):
        assert a["loss_kl"] == pytest.approx(b["loss_kl"], rel=1e-3, abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    for name, weight in shared_w.items():
        assert torch.allclose(weight, separate_w[name], atol=1e-4), name
    assert (shared_calls, separate_calls) == (3, 6)


def test_checkpoint_holds_glimpse_weights_not_the_base(synth_dir, tmp_path):
    trainer = _trainer(synth_dir, tmp_path / "run", max_steps=2, save_strategy="steps", save_steps=2)
    trainer.train()
    ckpt = tmp_path / "run" / "checkpoint-2"
    names = {p.name for p in ckpt.iterdir()}
    assert {"glimpse.safetensors", "glimpse_config.json", COMPLETE_MARKER, "trainer_state.json"} <= names
    assert not any(n.startswith("model") and n.endswith(".safetensors") for n in names)
    assert last_complete_checkpoint(tmp_path / "run") == str(ckpt)


def test_sparsity_penalty_lowers_the_keep_probability(synth_dir, tmp_path):
    trainer = _trainer(
        synth_dir,
        tmp_path / "run",
        max_steps=6,
        box_weight=0.0,
        sparsity="penalty",
        sparsity_weight=5.0,
        learning_rate=3e-2,
    )
    trainer.train()
    history = [h for h in trainer.state.log_history if "keep_prob" in h]
    assert history[-1]["keep_prob"] < history[0]["keep_prob"]
    assert all(h["loss_kl"] < 1.0 for h in history)


def _recipe(tmp_path, synth_dir) -> Path:
    return tiny_recipe(ROOT / "recipes/tiny/vip.yaml", tmp_path / "recipe.yaml", synth_dir, MAX_PIXELS)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "glimpserl.cli", *args]


def test_kill_mid_run_then_resume_ends_at_the_same_step(synth_dir, tmp_path):
    # Far more steps than the first save: the kill lands mid-run even when a step takes milliseconds.
    LAST = 40
    recipe, out = _recipe(tmp_path, synth_dir), tmp_path / "run"
    common = [
        "--output_dir",
        str(out),
        "--max_steps",
        str(LAST),
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--per_device_train_batch_size",
        "1",
        "--save_total_limit",
        "100",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        _cli("train", str(recipe), *common), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while last_complete_checkpoint(out) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reached = last_complete_checkpoint(out)
    assert reached is not None and not (out / f"checkpoint-{LAST}").exists(), "the run must be killed mid-way"
    # An interrupted save: a later checkpoint folder without the completion marker must be ignored.
    half = out / f"checkpoint-{int(reached.rsplit('-', 1)[1]) + 2}"
    if not (half / COMPLETE_MARKER).exists():
        half.mkdir(exist_ok=True)
        (half / "glimpse.safetensors").write_bytes(b"truncated")
    done = subprocess.run(
        _cli("train", str(recipe), *common, "--resume_from_checkpoint", "last"),
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "eval_results.json").read_text())
    assert results["global_step"] == LAST
    points = results["eval"]["operating_points"]
    assert [p["threshold"] for p in points] == sorted((p["threshold"] for p in points), reverse=True)
    ratios = [p["keep_ratio"] for p in points]
    assert ratios == sorted(ratios) and all("box_recall" in p for p in points)
    state = json.loads((out / f"checkpoint-{LAST}" / "trainer_state.json").read_text())
    assert state["global_step"] == LAST
    assert (out / f"checkpoint-{LAST}" / COMPLETE_MARKER).is_file()
    # The recipe's deploy_threshold is what the final glimpse weights carry.
    recipe = yaml.safe_load((ROOT / "recipes/tiny/vip.yaml").read_text())
    assert read_glimpse_config(out)[0].threshold == recipe["deploy_threshold"]


def test_train_with_a_missing_image_fails_fast_naming_the_row(synth_dir, tmp_path):
    rows = [json.loads(line) for line in (synth_dir / "train.jsonl").read_text().splitlines()]
    rows[3]["image"] = "images/does_not_exist.png"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recipe = _recipe(tmp_path, synth_dir)
    result = subprocess.run(
        _cli(
            "train",
            str(recipe),
            "--dataset",
            str(bad),
            "--image_root",
            str(synth_dir),
            "--output_dir",
            str(tmp_path / "run"),
        ),
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert "row 3" in result.stderr and "does_not_exist.png" in result.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("checkpoint-*"))


def test_threshold_zero_keeps_and_logs_every_token(synth_dir, tmp_path):
    """Threshold 0.0 means "keep every visual token": the trainer must use it as 0.0 (it used to read it as 0.5), so
    the logged hard keep ratio is 1.0 even when the VIP scores every token low (sigmoid(-6) = 0.0025)."""
    trainer = _trainer(synth_dir, tmp_path / "run", glimpse={"threshold": 0.0, "vip_init_bias": -6.0}, max_steps=1)
    assert trainer.threshold == 0.0
    trainer.train()
    assert trainer.state.log_history[0]["keep_ratio"] == 1.0
    assert trainer.state.log_history[0]["keep_prob"] < 0.1
