"""The GPU benchmark kit on this CPU: the published shapes match their configurations, the shape / dtype / images
flags reach the model and the input, and the one prepared GPU command runs end to end at a tiny shape and writes
every part, arm and column. No timing assertions."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from glimpserl.benchmarks import shapes
from glimpserl.benchmarks.families import family_of
from glimpserl.benchmarks.measure import _build_base, build_inputs
from glimpserl.benchmarks.prefill_decode import parse_args, spec_from_args

ROOT = Path(__file__).resolve().parents[1]
ARMS = ["unpruned", "glimpse", "gprune", "fastv", "divprune", "cdpruner", "random"]


def _documented(name: str) -> dict[str, str]:
    """The numbers benchmarks/shapes.py's docstring writes for one preset: {"text hidden": "3584", ...}."""
    paragraph = next(p for p in shapes.__doc__.split("\n\n") if p.startswith(name))
    text = " ".join(paragraph.split())
    fields = re.findall(r"(text hidden|layers|heads|kv heads|intermediate|vocab|tied|hidden|K) (\w+)", text)
    text_part, vision_part = text.split("; vision ")
    documented = dict(re.findall(r"(text hidden|kv heads|heads|layers|intermediate|vocab|tied) (\w+)", text_part))
    documented |= {f"vision {k}": v for k, v in re.findall(r"(layers|hidden|heads|intermediate) (\d+)", vision_part)}
    documented["K"] = re.search(r"K (\d+)", vision_part).group(1)
    documented["source"] = re.search(r"\(([\w/.-]+)\)", text).group(1)
    assert fields  # the paragraph is there and in the expected form
    return documented


def _preset_model(name: str):
    """The --shape NAME model on the meta device (no weights are made) and its spec."""
    extra = ["--visual-tokens", "576"] if shapes.SHAPES[name].family == "llava" else []
    spec = spec_from_args(parse_args(["--shape", name, *extra]))
    return _build_base(spec, family_of(spec.family).processor(spec), torch.device("meta")), spec


def _vision_numbers(config) -> dict:
    v = config.vision_config
    if config.model_type == "llava":  # CLIP's names
        return {"layers": v.num_hidden_layers, "hidden": v.hidden_size, "heads": v.num_attention_heads,
                "intermediate": v.intermediate_size}  # fmt: skip
    return {"layers": v.depth, "hidden": v.hidden_size, "heads": v.num_heads, "intermediate": v.intermediate_size}


def _family_constants(config) -> None:
    """What the presets' family paragraphs in benchmarks/shapes.py state beyond the numbers."""
    text, vision = config.text_config, config.vision_config
    rope = text.rope_parameters
    if config.model_type == "qwen2_5_vl":
        assert rope["mrope_section"] == [16, 24, 24] and rope["rope_theta"] == 1e6
        assert vision.out_hidden_size == text.hidden_size and vision.patch_size == 14 and vision.window_size == 112
        assert vision.fullatt_block_indexes == [7, 15, 23, 31]
    elif config.model_type == "qwen3_vl":
        assert rope["mrope_section"] == [24, 20, 20] and rope["mrope_interleaved"] and rope["rope_theta"] == 5e6
        assert text.head_dim == 128 and text.max_position_embeddings == 262144
        assert vision.patch_size == 16 and vision.spatial_merge_size == 2 and vision.hidden_act == "gelu_pytorch_tanh"
        assert vision.num_position_embeddings == 2304 and vision.deepstack_visual_indexes == [8, 16, 24]
        assert vision.out_hidden_size == text.hidden_size
    else:
        assert rope["rope_theta"] == 1e4 and text.max_position_embeddings == 4096
        assert vision.image_size == 336 and vision.patch_size == 14 and config.image_seq_length == 576
        assert config.vision_feature_layer == -2 and config.vision_feature_select_strategy == "default"
        assert config.projector_hidden_act == "gelu"


@pytest.mark.parametrize("name", sorted(shapes.SHAPES))
def test_shape_presets_build_the_published_configuration(name):
    """The transformers config built from --shape NAME carries the numbers the preset's docstring writes (from the
    model's config.json), and its family's constants, on the meta device: no weights are made."""
    model, spec = _preset_model(name)
    text = model.config.text_config
    built = {
        "text hidden": text.hidden_size, "layers": text.num_hidden_layers, "heads": text.num_attention_heads,
        "kv heads": text.num_key_value_heads, "intermediate": text.intermediate_size, "vocab": text.vocab_size,
        "tied": str(model.config.tie_word_embeddings).lower(), "K": spec.layer_k, "source": shapes.SHAPES[name].source,
        **{f"vision {k}": v for k, v in _vision_numbers(model.config).items()},
    }  # fmt: skip
    assert {k: str(v) for k, v in built.items()} == _documented(name)
    assert model.config.model_type == shapes.SHAPES[name].family
    _family_constants(model.config)


@pytest.mark.parametrize(
    "name, billions", [("qwen2_5_vl_7b", 8.29), ("qwen3_vl_8b", 8.77), ("llava_1_5_7b", 7.06)]
)  # the model cards' "8.29B / 8.77B / 7.06B params"
def test_the_7b_shapes_have_the_published_parameter_count(name, billions):
    model, _ = _preset_model(name)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(billions, abs=0.01)


def test_a_shape_flag_beside_a_preset_is_an_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--shape", "qwen2_5_vl_3b", "--hidden", "512", "--vocab", "100"])
    assert "--shape qwen2_5_vl_3b sets --hidden, --vocab itself" in capsys.readouterr().err
    assert spec_from_args(parse_args(["--shape", "qwen2_5_vl_3b", "--layer-k", "12"])).layer_k == 12  # K sweeps
    with pytest.raises(SystemExit):
        parse_args(["--shape", "qwen3_vl_8b", "--family", "llava"])
    assert "--shape qwen3_vl_8b is a qwen3_vl model; drop --family llava" in capsys.readouterr().err


def test_llava_sees_its_fixed_image_only(capsys):
    """LLaVA-1.5-7B's CLIP tower has one position per patch of a 336 px image: another token count is an error that
    says what to set; a CPU-sized LLaVA gets the square image its configured tower sees."""
    with pytest.raises(SystemExit):
        parse_args(["--shape", "llava_1_5_7b", "--visual-tokens", "1024"])
    err = capsys.readouterr().err
    assert "sees 576 visual tokens per image" in err and "--visual-tokens 576, and --images N" in err
    args = ["--family", "llava", "--hidden", "64", "--layers", "4", "--heads", "4", "--vision-hidden", "32"]
    spec = spec_from_args(parse_args([*args, "--vision-layers", "2", "--visual-tokens", "30", "--images", "2"]))
    processor, inputs = build_inputs(spec, torch.device("cpu"))
    model = _build_base(spec, processor, torch.device("cpu"))
    assert model.config.vision_config.image_size == 6 * 14 and inputs["pixel_values"].shape == (2, 3, 84, 84)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 2 * 36


def test_dtype_and_images_reach_the_model_and_the_input():
    args = ["--hidden", "64", "--layers", "4", "--heads", "4", "--vision-layers", "2", "--vision-hidden", "32"]
    spec = spec_from_args(parse_args([*args, "--dtype", "bfloat16", "--visual-tokens", "16", "--images", "3"]))
    processor, inputs = build_inputs(spec, torch.device("cpu"))
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]] * 3 and inputs["pixel_values"].dtype == torch.bfloat16
    model = _build_base(spec, processor, torch.device("cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.language_model.rotary_emb.inv_freq.dtype == torch.float32  # as from_pretrained leaves it
    with torch.no_grad():
        assert model(**inputs).logits.dtype == torch.bfloat16


@pytest.mark.slow
def test_the_gpu_command_runs_end_to_end_at_a_tiny_shape_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --tiny: the repository on PYTHONPATH as `glimpserl`, every part written with every
    arm and column."""
    env = {**os.environ, "OUT": str(tmp_path / "check")}
    done = subprocess.run(
        [str(ROOT / "benchmarks/gpu_check.sh"), "--tiny"], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    markdown = (tmp_path / "check" / "gpu_check.md").read_text()
    for part, images in (("single", 1), ("multi_image", 2)):
        sizes = results["parts"][part]["sizes"]
        assert results["parts"][part]["arms"] == ARMS and sizes[0]["images"] == images
        for arm in ARMS:
            row = sizes[0]["arms"][arm]
            assert row["prefill_s"]["median"] > 0 and row["decode_s_per_token"]["median"] > 0
            assert row["kv_length"] > 0 and row["peak_memory"]["delta"] > 0
            assert {"prefill_s", "decode_s_per_token", "kv_length", "flops", "peak_memory"} <= set(row["ratios"])
        kept = sizes[0]["kept"]
        assert (
            sizes[0]["arms"]["glimpse"]["kv_length"]
            == sizes[0]["text"] + kept
            == sizes[0]["arms"]["random"]["kv_length"]
        )
    grpo = results["parts"]["grpo"]
    assert set(grpo["arms"]) == {"trl", "pruned", "keep_all", "sample"} and set(grpo["bounds"]) == {
        "generation_kv", "log_probs", "backward",
    }  # fmt: skip
    stage1 = results["parts"]["stage1"]
    assert stage1["batch"] == 2 and stage1["stage1_step_s"] > 0 and stage1["stage1_separate_teacher_s"] > 0
    assert "## Several images in one prompt" in markdown and "Best case per phase" in markdown
    assert "## One stage-1 step" in markdown


@pytest.mark.parametrize("name", sorted(shapes.SHAPES))
def test_each_preset_prunes_at_its_recipes_layer(name):
    """A preset's K is the glimpse layer its GPU recipe trains (recipes/<name>/vip.yaml)."""
    import yaml

    recipe = yaml.safe_load((ROOT / "recipes" / name / "vip.yaml").read_text())
    assert recipe["glimpse_layer"] == shapes.SHAPES[name].layer_k
