"""Fault injection: stage 1, stage 2 (and stage sft) runs killed at precise points resume from the newest complete
checkpoint with the losses of an uninterrupted run, or refuse with the reason; never a silent restart from step 0.

A kill is the `Killed` exception raised at the chosen point of the real `glimpserl train` entry point (in-process):
nothing after that point runs, not even `except Exception` handlers. A half-written file is written half before
the kill, as a killed writer leaves it. The export kill is a real SIGKILL, so its clean-up code does not run either.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from helpers import tiny_recipe

from glimpserl.cli import main
from glimpserl.rl.data.synth import write_synth

ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS = 112 * 112


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: Path
    steps: int
    save_steps: int
    args: tuple[str, ...]


VIP = Stage(
    "vip", ROOT / "recipes/tiny/vip.yaml", 4, 2, ("--per_device_train_batch_size", "2", "--eval_max_samples", "2")
)
GRPO = Stage(
    "grpo",
    ROOT / "recipes/tiny/grpo.yaml",
    3,
    1,
    ("--per_device_train_batch_size", "2", "--num_generations", "2", "--max_completion_length", "3"),
)
GRPO_FULL = Stage("grpo-full", GRPO.recipe, 3, 1, (*GRPO.args, "--use_lora", "false"))
SHAPES = ("--synth_train", "8", "--synth_curriculum", "4", "--synth_val", "2", "--synth_test", "2")
SHAPES += ("--synth_image_size", "112", "--min_pixels", "12544", "--max_pixels", "12544")
SFT = Stage("sft", ROOT / "recipes/mini/sft.yaml", 3, 1, (*SHAPES, "--per_device_train_batch_size", "2"))


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("synth"), n_train=8, n_test=2, image_size=112, seed=0)


def _train(stage: Stage, synth_dir, out: Path, *extra: str) -> int:
    """`glimpserl train` of the stage's recipe on small synthetic data (a few 112 px images), in this process."""
    recipe = tiny_recipe(stage.recipe, out.parent / f"{stage.name}.yaml", synth_dir, MAX_PIXELS)
    steps = ["--max_steps", str(stage.steps), "--save_steps", str(stage.save_steps), "--logging_steps", "1"]
    return main(
        ["train", str(recipe), "--output_dir", str(out), *steps, *stage.args, "--save_total_limit", "9", *extra]
    )


class Killed(BaseException):
    """The process dies here."""


def _losses(out: Path, step: int) -> dict[int, float]:
    """The training loss of every step, from the history the run's final checkpoint carries."""
    state = json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def assert_same_losses(got: dict[int, float], expected: dict[int, float]) -> None:
    assert list(got) == list(expected)
    assert list(got.values()) == pytest.approx(list(expected.values()), rel=1e-5)


@pytest.fixture
def starts(monkeypatch) -> list:
    """The checkpoint every training run of the test started from (None = step 0)."""
    seen = []
    real = transformers.Trainer.train

    def spy(self, resume_from_checkpoint=None, **kwargs):
        seen.append(resume_from_checkpoint)
        return real(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", spy)
    return seen


# ---- fault points ------------------------------------------------------------------------------------------------


def half_written_torch_save(monkeypatch, suffix: str) -> None:
    """torch.save of the file ending in `suffix` writes half of its bytes, then the process dies."""
    real = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, str | os.PathLike) and str(f).endswith(suffix):
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise Killed(suffix)
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def half_written_safetensors(monkeypatch, folder: str, name: str) -> None:
    """A safetensors file `name` written into checkpoint folder `folder` (glimpse weights, LoRA adapter) is cut in
    half, then the process dies. The glimpse is written to a temporary folder inside the checkpoint first."""
    import peft.peft_model
    import safetensors.torch

    import glimpserl.models.glimpse

    real = safetensors.torch.save_file

    def save_file(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        path = Path(filename)
        if path.name == name and folder in path.parts:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            raise Killed(f"{folder}/{name}")

    for module in (safetensors.torch, glimpserl.models.glimpse):
        monkeypatch.setattr(module, "save_file", save_file)
    monkeypatch.setattr(peft.peft_model, "safe_save_file", save_file)


def after_rotation_deletes(monkeypatch, name: str) -> None:
    """Rotation (save_total_limit) deletes checkpoint folder `name`, then the process dies."""
    real = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        real(path, *args, **kwargs)
        if Path(path).name == name:
            raise Killed(f"after deleting {name}")

    monkeypatch.setattr(shutil, "rmtree", rmtree)


def after_trainer_state(monkeypatch, folder: str) -> None:
    """The last file of transformers' save (trainer_state.json) is written, then the process dies."""
    real = transformers.TrainerState.save_to_json

    def save_to_json(self, path):
        real(self, path)
        if Path(path).parent.name == folder:
            raise Killed(f"{folder}/trainer_state.json written")

    monkeypatch.setattr(transformers.TrainerState, "save_to_json", save_to_json)


def during_step(monkeypatch, trainer_cls, step: int) -> None:
    """The process dies inside training step `step` (1-based), in the middle of the forward pass."""
    real = trainer_cls.compute_loss

    def compute_loss(self, *args, **kwargs):
        if self.state.global_step + 1 == step:
            raise Killed(f"step {step}")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(trainer_cls, "compute_loss", compute_loss)


def during_final_save(monkeypatch, out: Path) -> None:
    """The final save into output_dir (after the last step) starts writing the glimpse, then the process dies."""
    import glimpserl.rl.trainers.checkpoint as module

    real = module.save_glimpse

    def save_glimpse(model, directory):
        if Path(directory) == out:
            raise Killed("final save")
        return real(model, directory)

    monkeypatch.setattr(module, "save_glimpse", save_glimpse)


@pytest.fixture(scope="module")
def reference(synth_dir, tmp_path_factory):
    """Per stage, an uninterrupted run: (output_dir, loss of every step)."""
    runs = {}

    def get(stage: Stage):
        if stage.name not in runs:
            out = tmp_path_factory.mktemp(f"{stage.name}-reference") / "run"
            assert _train(stage, synth_dir, out) == 0
            runs[stage.name] = out, _losses(out, stage.steps)
        return runs[stage.name]

    return get


def _vip_trainer():
    from glimpserl.rl.trainers.vip import VIPTrainer

    return VIPTrainer


def _grpo_trainer():
    from glimpserl.rl.trainers.grpo import GlimpseGRPOTrainer

    return GlimpseGRPOTrainer


# (stage, where the kill happens, how to inject it, the checkpoint `last` must resume from)
FAULTS = [
    (VIP, "optimizer half-written", lambda p, out: half_written_torch_save(p, "checkpoint-4/optimizer.pt"), 2),
    (VIP, "after trainer state, before marker", lambda p, out: after_trainer_state(p, "checkpoint-4"), 2),
    (VIP, "between rotation and marker", lambda p, out: after_rotation_deletes(p, "checkpoint-2"), 4),
    (VIP, "inside a training step", lambda p, out: during_step(p, _vip_trainer(), 3), 2),
    (VIP, "during the final save", lambda p, out: during_final_save(p, out), 4),
    (
        GRPO,
        "adapter half-written",
        lambda p, out: half_written_safetensors(p, "checkpoint-2", "adapter_model.safetensors"),
        1,
    ),
    (GRPO, "between rotation and marker", lambda p, out: after_rotation_deletes(p, "checkpoint-1"), 2),
    (GRPO, "inside a training step", lambda p, out: during_step(p, _grpo_trainer(), 3), 2),
    (GRPO, "during the final save", lambda p, out: during_final_save(p, out), 3),
    (GRPO_FULL, "inside a training step", lambda p, out: during_step(p, _grpo_trainer(), 3), 2),
    (SFT, "optimizer half-written", lambda p, out: half_written_torch_save(p, "checkpoint-2/optimizer.pt"), 1),
    (SFT, "between rotation and marker", lambda p, out: after_rotation_deletes(p, "checkpoint-1"), 2),
]


@pytest.mark.parametrize(
    ("stage", "fault", "inject", "expected"), FAULTS, ids=[f"{s.name}-{f}" for s, f, _, _ in FAULTS]
)
def test_killed_run_resumes_from_newest_complete_checkpoint(
    stage, fault, inject, expected, synth_dir, reference, tmp_path, starts
):
    out = tmp_path / "run"
    limit = ["--save_total_limit", "1"] if fault == "between rotation and marker" else []
    with pytest.MonkeyPatch.context() as patch:
        inject(patch, out)
        with pytest.raises(Killed):
            _train(stage, synth_dir, out, *limit)
    assert _train(stage, synth_dir, out, *limit, "--resume_from_checkpoint", "last") == 0
    assert starts == [None, str(out / f"checkpoint-{expected}")]
    assert_same_losses(_losses(out, stage.steps), reference(stage)[1])
    if stage is VIP:
        assert json.loads((out / "eval_results.json").read_text())["global_step"] == stage.steps


@pytest.mark.parametrize("stage", [VIP, GRPO], ids=["vip", "grpo"])
def test_killed_while_resaving_over_a_later_checkpoint(stage, synth_dir, reference, tmp_path, starts):
    """Resuming from an explicit earlier checkpoint re-saves over the later ones; a kill midway must not leave the
    half-rewritten folder looking complete."""
    out, first, second = tmp_path / "run", stage.save_steps, 2 * stage.save_steps
    for step in (first, second):
        shutil.copytree(reference(stage)[0] / f"checkpoint-{step}", out / f"checkpoint-{step}")
    with pytest.MonkeyPatch.context() as patch:
        half_written_torch_save(patch, f"checkpoint-{second}/optimizer.pt")
        with pytest.raises(Killed):
            _train(stage, synth_dir, out, "--resume_from_checkpoint", str(out / f"checkpoint-{first}"))
    assert _train(stage, synth_dir, out, "--resume_from_checkpoint", "last") == 0
    assert starts[-1] == str(out / f"checkpoint-{first}")
    assert_same_losses(_losses(out, stage.steps), reference(stage)[1])


@pytest.mark.parametrize("stage", [VIP, GRPO], ids=["vip", "grpo"])
def test_nothing_complete_is_refused_not_restarted(stage, synth_dir, tmp_path, starts, capsys):
    out, first = tmp_path / "run", f"checkpoint-{stage.save_steps}"
    with pytest.MonkeyPatch.context() as patch:
        half_written_torch_save(patch, f"{first}/optimizer.pt")
        with pytest.raises(Killed):
            _train(stage, synth_dir, out)
    assert _train(stage, synth_dir, out, "--resume_from_checkpoint", "last") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{first} but none is complete" in err and "Delete those folders" in err
    assert starts == [None]  # the second run never started training


def test_export_killed_midway_is_cleaned_up_and_never_taken_for_a_run(reference, tmp_path):
    """A real SIGKILL in the middle of `glimpserl export` (its clean-up code cannot run) leaves a hidden staging
    folder; it is not a run, and the next export to the same place removes it."""
    from glimpserl.rl.runs.export import inspect_run

    run, out = reference(GRPO)[0], tmp_path / "export"
    kill = (
        "import os, signal, sys\n"
        "from glimpserl.rl.runs import export\n"
        "export._copy_processor = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
        "export.export_run(sys.argv[1], sys.argv[2])\n"
    )
    done = subprocess.run([sys.executable, "-c", kill, str(run), str(out)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    [partial] = list(tmp_path.glob(".export.partial-*"))
    assert (partial / "adapter_model.safetensors").is_file() and not out.exists()
    with pytest.raises(ValueError, match="unfinished export"):
        inspect_run(partial)
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    assert inspect_run(out).kind == "adapter"
