"""Bad recipes, data, rewards and files fail within seconds, before any model loads, with one line that names the
file, row or key and says what to change: never a usage dump or a traceback."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from helpers import tiny_recipe
from PIL import Image

from glimpserl.cli import main
from glimpserl.rl.data.synth import write_synth

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("synth"), n_train=4, n_test=2, image_size=112, seed=0)


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: every error here must come before one."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", refuse)


def fails_fast(capsys, argv: list[str], *fragments: str) -> str:
    """Run the CLI; it must exit 2 within 5 s with a single error line holding every fragment."""
    start = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert elapsed < 5.0, f"the error took {elapsed:.1f}s"
    assert "usage:" not in err and "Traceback" not in err, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"glimpserl {argv[0]}: error: ")
    for fragment in fragments:
        assert fragment in line, line
    return line


def _recipe(tmp_path, synth_dir, stage="vip", edit=lambda text: text) -> Path:
    path = tiny_recipe(ROOT / f"recipes/tiny/{stage}.yaml", tmp_path / f"{stage}.yaml", synth_dir, 112 * 112)
    path.write_text(edit(path.read_text()))
    return path


def _replace(old: str, new: str):
    def edit(text: str) -> str:
        assert old in text
        return text.replace(old, new)

    return edit


# ---- recipes ----------------------------------------------------------------------------------------------------


RECIPE_ERRORS = [
    (
        "yaml syntax",
        "vip",
        _replace("max_pixels: 12544", "max_pixels: [12544"),
        ["vip.yaml is not valid YAML at line"],
    ),
    (
        "string for a float",
        "vip",
        _replace("learning_rate: 3.0e-3", "learning_rate: fast"),
        ["vip.yaml: learning_rate: invalid float value: 'fast'"],
    ),
    (
        "list for a float",
        "vip",
        _replace("learning_rate: 3.0e-3", "learning_rate: [0.1]"),
        ["vip.yaml: learning_rate is [0.1] (list), expected float"],
    ),
    (
        "unknown choice",
        "vip",
        _replace("sparsity: target", "sparsity: tragte"),
        ["vip.yaml: sparsity is 'tragte' (str), expected one of 'target', 'batch_target', 'penalty'"],
    ),
    (
        "negative batch size",
        "vip",
        _replace("per_device_train_batch_size: 4", "per_device_train_batch_size: -1"),
        ["vip.yaml: per_device_train_batch_size must be >= 1, got -1"],
    ),
    (
        "negative focal exponent",
        "vip",
        _replace("sparsity: target", "sparsity: target\nbox_focal_gamma: -2"),
        ["vip.yaml: box_focal_gamma must be >= 0, got -2"],
    ),
    (
        "no model",
        "vip",
        _replace("model_name_or_path: builtin:tiny-qwen2_5_vl\n", ""),
        ["vip.yaml sets no model_name_or_path: add `model_name_or_path: ...` (Base VLM"],
    ),
    (
        "model path that does not exist",
        "grpo",
        _replace("model_name_or_path: builtin:tiny-qwen2_5_vl", "model_name_or_path: /models/qwen2.5-vl-7b"),
        ["grpo.yaml: model_name_or_path: Model path '/models/qwen2.5-vl-7b' does not exist"],
    ),
    (
        "data file that does not exist",
        "vip",
        _replace("train.jsonl", "trian.jsonl"),
        ["vip.yaml: dataset: dataset '", "trian.jsonl' does not exist"],
    ),
    (
        "unknown gate reward",
        "grpo",
        _replace("gate: exact_match", "gate: exact_mtch"),
        ["grpo.yaml: rewards: Unknown reward 'exact_mtch'"],
    ),
    (
        "typo'd reward parameter",
        "grpo",
        _replace("threshold: 0.5}", "treshold: 0.5}"),
        ["grpo.yaml: rewards: Reward 'gated_prune_ratio' has no parameter 'treshold'"],
    ),
    (
        "non-numeric reward weight",
        "grpo",
        _replace("{name: exact_match, weight: 1.0}", "{name: exact_match, weight: high}"),
        ["grpo.yaml: rewards: Reward 'exact_match': weight must be a number, got 'high'"],
    ),
    (
        "reward_weights beside weighted reward specs",
        "grpo",
        _replace("mask_policy: sample", "mask_policy: sample\nreward_weights: [1.0, 1.0, 1.0]"),
        ["grpo.yaml: reward_weights is taken from the reward specs: give each reward its weight in `rewards`"],
    ),
    (
        "bad glimpse value",
        "grpo",
        _replace("glimpse_layer: 2", "glimpse_layer: 2\nglimpse_threshold: 1.5"),
        ["grpo.yaml: glimpse_threshold must be in [0, 1), got 1.5"],
    ),
]


@pytest.mark.parametrize(
    ("stage", "edit", "fragments"), [c[1:] for c in RECIPE_ERRORS], ids=[c[0] for c in RECIPE_ERRORS]
)
def test_recipe_error_is_one_line_before_any_model(stage, edit, fragments, synth_dir, tmp_path, no_model, capsys):
    recipe = _recipe(tmp_path, synth_dir, stage, edit)
    fails_fast(capsys, ["train", str(recipe), "--output_dir", str(tmp_path / "run")], *fragments)
    assert not (tmp_path / "run").exists()


def test_command_line_value_error_names_the_key(synth_dir, tmp_path, no_model, capsys):
    recipe = _recipe(tmp_path, synth_dir)
    argv = ["train", str(recipe), "--per_device_train_batch_size", "two"]
    fails_fast(capsys, argv, "Command line: per_device_train_batch_size: invalid int value: 'two'")
    fails_fast(capsys, ["train", str(recipe), "--max_steps", "0"], "Command line: max_steps must be >= 1")


def test_damaged_glimpse_init_is_named_before_the_model_loads(synth_dir, tmp_path, no_model, capsys):
    folder = tmp_path / "vip-run"
    folder.mkdir()
    (folder / "glimpse_config.json").write_text('{"config": {"layer": 2}, "base": {}}')
    (folder / "glimpse.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    recipe = _recipe(tmp_path, synth_dir, "grpo", _replace("glimpse_layer: 2", f"glimpse_init: {folder}"))
    fails_fast(capsys, ["train", str(recipe)], "glimpse_init:", "glimpse.safetensors is not a readable safetensors")
    (folder / "glimpse_config.json").write_text('{"config": {"layer": 2,')
    fails_fast(capsys, ["train", str(recipe)], "glimpse_init:", "glimpse_config.json is damaged (not valid JSON")


def test_bad_data_row_is_named_before_the_model_loads(synth_dir, tmp_path, no_model, capsys):
    Image.new("RGB", (2000, 5), "white").save(tmp_path / "strip.png")
    rows = [json.loads(line) for line in (synth_dir / "train.jsonl").read_text().splitlines()]
    rows = [{**row, "image": str(synth_dir / row["image"])} for row in rows]
    rows[1]["image"] = str(tmp_path / "strip.png")
    rows[1]["boxes"] = []
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = _recipe(tmp_path, synth_dir, "vip", _replace(str(synth_dir / "train.jsonl"), str(data)))
    fails_fast(capsys, ["train", str(recipe)], "train.jsonl: row 1, line 2", "2000x5", "max_aspect_ratio=200")


BAD_FILES = {
    "unclosed CSV quote": (
        "bad.csv",
        b'image,question,answer\nimg.png,"What colour,red\nimg.png,Q,a\n',
        "line 2: the row starting here is not valid CSV",
    ),
    "non-UTF-8 JSONL line": (
        "bad.jsonl",
        b'{"image": "img.png", "question": "Q \xff", "answer": "a"}\n',
        "line 1: the line is not UTF-8",
    ),
    "empty file": ("empty.jsonl", b"", "holds no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_data_file_is_one_line_before_the_model_loads(case, synth_dir, tmp_path, no_model, capsys):
    name, content, fragment = BAD_FILES[case]
    data = tmp_path / name
    data.write_bytes(content)
    recipe = _recipe(tmp_path, synth_dir, "vip", _replace(str(synth_dir / "train.jsonl"), str(data)))
    fails_fast(capsys, ["train", str(recipe)], name, fragment)


def test_every_glimpse_config_field_is_a_recipe_key(synth_dir, tmp_path):
    from glimpserl.models import GlimpseConfig
    from glimpserl.rl.config.recipe import parse_recipe

    overrides = ["--glimpse_readout", "log_softmax", "--glimpse_vision_feature_layers", "1", "0"]
    overrides += ["--vip_rope_theta", "50", "--vip_init_bias", "1.5", "--glimpse_min_keep", "2"]
    _, model_args, _, _ = parse_recipe(_recipe(tmp_path, synth_dir), overrides)
    config = model_args.glimpse_config()
    assert (config.readout, config.vision_feature_layers, config.vip_rope_theta) == ("log_softmax", [1, 0], 50.0)
    assert (config.vip_init_bias, config.min_keep, config.layer, config.vip_hidden_size) == (1.5, 2, 2, 64)
    defaults = {f.name: getattr(model_args.__class__(), f.name) for f in dataclasses.fields(model_args)}
    for f in dataclasses.fields(GlimpseConfig):  # no field without a key, every default the config's own
        key = f.name if f.name.startswith("vip_") else f"glimpse_{f.name}"
        assert defaults[key] == getattr(GlimpseConfig(), f.name), key


# ---- the command line -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["after", "before", "alone"])
def test_help_keys_in_every_position(position, capsys):
    recipe = str(ROOT / "recipes/tiny/grpo.yaml")
    argv = {"after": [recipe, "--help-keys"], "before": ["--help-keys", recipe], "alone": ["--help-keys"]}[position]
    assert main(["train", *argv]) == 0
    out = capsys.readouterr().out
    assert "--glimpse_readout" in out and "--rewards" in out
    assert ("(stage: vip)" in out) == (position == "alone")


def test_train_without_a_recipe_says_what_to_give(capsys):
    fails_fast(capsys, ["train"], "give a recipe: glimpserl train RECIPE.yaml")


def test_visualize_image_that_is_a_folder_or_corrupt(tmp_path, no_model, capsys):
    argv = ["visualize", "--out", str(tmp_path / "v.png"), "--image"]
    fails_fast(capsys, [*argv, str(tmp_path)], f"--image {tmp_path} is a folder; give one image file")
    broken = tmp_path / "broken.png"
    Image.new("RGB", (64, 64), "red").save(broken)
    broken.write_bytes(broken.read_bytes()[:60])
    fails_fast(capsys, [*argv, str(broken)], f"--image {broken} cannot be read as an image")
    assert not (tmp_path / "v.png").exists()


def test_eval_extreme_aspect_ratio_is_named_before_the_model_loads(tmp_path, no_model, capsys):
    Image.new("RGB", (5, 2000), "white").save(tmp_path / "tall.png")
    rows = [{"image": "tall.png", "question": "What colour?", "answer": "white"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["eval", "--dataset", str(tmp_path / "d.jsonl"), "--pruners", "none"]
    fails_fast(capsys, argv, "d.jsonl: row 0, line 1", "tall.png is 5x2000", "max_aspect_ratio=200")


def test_eval_weights_and_model_are_checked_before_the_model_loads(tmp_path, no_model, capsys):
    fails_fast(capsys, ["eval", "--glimpse", str(tmp_path / "nope")], f"No glimpse checkpoint in {tmp_path / 'nope'}")
    fails_fast(capsys, ["eval", "--model", "/models/missing-vlm"], "Model path '/models/missing-vlm' does not exist")
    fails_fast(capsys, ["eval", "--run", str(tmp_path)], f"{tmp_path} has no glimpse weights")


def _trained_glimpse(folder: Path, **config) -> Path:
    """A glimpse checkpoint as stage 1 writes it (on the tiny recipes' VIP shape), without training it."""
    from glimpserl.models import GlimpseConfig, add_glimpse, save_glimpse
    from glimpserl.models.tiny import build_tiny_model

    shape = dict(layer=2, vip_hidden_size=64, vip_intermediate_size=128, vip_num_blocks=2, vip_num_heads=2)
    return save_glimpse(add_glimpse(build_tiny_model("qwen2_5_vl", seed=0), GlimpseConfig(**shape, **config)), folder)


def test_glimpse_init_runs_the_loaded_settings_with_the_decision_keys_on_top(synth_dir, tmp_path):
    """With glimpse_init, the run uses the loaded glimpse's settings (not GlimpseConfig's defaults, which the
    recipe's keys used to carry in silently) and its weights; threshold-type keys the recipe sets apply on top, also
    when a recipe sets one to its default value. ModelArguments built in code behave alike."""
    import torch
    from safetensors.torch import load_file

    from glimpserl.models import glimpse_module
    from glimpserl.models.tiny import build_tiny_model
    from glimpserl.rl.config.recipe import parse_recipe
    from glimpserl.rl.config.stages import ModelArguments
    from glimpserl.rl.train import attach_glimpse

    folder = _trained_glimpse(tmp_path / "vip-run", threshold=0.3, max_keep_ratio=0.5, vip_init_bias=1.0)
    recipe = _recipe(tmp_path, synth_dir, "grpo", _replace("glimpse_layer: 2", f"glimpse_init: {folder}"))

    def attached(model_args):
        return glimpse_module(attach_glimpse(build_tiny_model("qwen2_5_vl", seed=0), model_args))

    _, model_args, _, _ = parse_recipe(recipe, ["--glimpse_threshold", "0.2"])
    glimpse = attached(model_args)
    config = glimpse.config
    assert (config.threshold, config.max_keep_ratio, config.vip_init_bias, config.layer) == (0.2, 0.5, 1.0, 2)
    loaded = load_file(str(folder / "glimpse.safetensors"))  # the weights are the loaded ones, not a fresh VIP's
    assert all(torch.equal(loaded[k], v) for k, v in glimpse.state_dict().items())
    _, model_args, _, _ = parse_recipe(recipe, ["--glimpse_threshold", "0.5"])
    assert attached(model_args).config.threshold == 0.5
    in_code = ModelArguments(model_name_or_path="builtin:tiny-qwen2_5_vl", glimpse_init=str(folder))
    assert (attached(in_code).config.threshold, attached(in_code).config.max_keep_ratio) == (0.3, 0.5)


def test_glimpse_init_with_a_key_that_would_change_the_trained_vip_is_one_line(synth_dir, tmp_path, no_model, capsys):
    folder = _trained_glimpse(tmp_path / "vip-run")
    recipe = _recipe(tmp_path, synth_dir, "grpo", _replace("glimpse_layer: 2", f"glimpse_init: {folder}"))
    argv = ["train", str(recipe), "--vip_hidden_size", "32"]
    fails_fast(capsys, argv, "glimpse_init holds a trained glimpse", "vip_hidden_size=32 (trained: 64)")
    fails_fast(capsys, [*argv[:2], "--glimpse_layer", "1"], "glimpse_layer=1 (trained: 2)", "glimpse_threshold")
