"""`glimpserl bench`: a smoke run at a tiny shape (files, arms, sizes, KV lengths), the selection FLOPs of the
training-free arms against the FLOPs torch executes, and the bad-input errors. No timing assertions."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cpu_sdpa_flops, mv_flops
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from glimpserl.benchmarks import flops
from glimpserl.benchmarks.arguments import BENCH_PRUNERS, FAMILIES
from glimpserl.benchmarks.families import family_of, shapes_from_model
from glimpserl.benchmarks.measure import ModelSpec, build_arm, build_inputs, closest_grid, time_prefill
from glimpserl.benchmarks.scaling import arm_kwargs, valid_pruners
from glimpserl.cli import main

TINY = ["--hidden", "64", "--layers", "4", "--heads", "4", "--kv-heads", "2", "--vision-hidden", "32"]
TINY += ["--vision-layers", "4", "--new-tokens", "2", "--repeats", "1", "--threads", "1"]


@pytest.mark.slow
def test_bench_smoke_writes_every_arm_and_size(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", *TINY, "--visual-tokens", "64,144", "--pruners", "glimpse,random", "--out-dir", str(out)]
    assert main(args) == 0
    assert "| 144 | glimpse |" in capsys.readouterr().out
    saved = json.loads((out / "scaling.json").read_text())
    table = (out / "scaling.md").read_text()
    assert table.startswith("Model: Qwen2.5-VL-shaped:") and "Prefill ratio / FLOPs bound per arm" in table
    with Image.open(out / "scaling.png") as png:
        assert png.format == "PNG" and png.size[0] > 500
    assert saved["arms"] == ["unpruned", "glimpse", "random"]
    assert [size["visual"] for size in saved["sizes"]] == [64, 144]  # 8x8 and 12x12 grids: exact counts
    for size in saved["sizes"]:
        assert set(size["arms"]) == {"unpruned", "glimpse", "random"}
        assert size["kept"] == int(0.07 * size["visual"]) and size["prompt"] == size["text"] + size["visual"]
        assert size["arms"]["unpruned"]["kv_length"] == size["prompt"]
        for arm in ("glimpse", "random"):
            result = size["arms"][arm]
            assert result["kv_length"] == size["text"] + size["kept"]
            assert {"prefill_s", "decode_s_per_token", "kv_length", "peak_memory", "flops"} <= set(result["ratios"])
            assert result["peak_memory"]["delta"] >= 0
            ratios = result["ratios"]
            assert ratios["prefill_over_flops"] == pytest.approx(ratios["prefill_s"] / ratios["flops"])
        assert size["arms"]["glimpse"]["flops"]["vip"] > 0 and size["arms"]["random"]["flops"]["selection"] == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pruner", ["gprune", "fastv", "divprune", "random"])
def test_training_free_count_equals_the_flops_torch_executes(pruner, family):
    spec = ModelSpec(64, 4, 4, 2, 320, 2, 32, 4, 2, visual_tokens=100, keep_ratio=0.1, grid=(10, 10), family=family)
    processor, inputs = build_inputs(spec, torch.device("cpu"))
    model = build_arm(spec, processor, torch.device("cpu"), "pruned").requires_grad_(False)
    text, vision, _ = shapes_from_model(model)
    prompt = inputs["input_ids"].shape[1]
    grid = family_of(family).image_grids(model.config, inputs)
    expected = flops.prefill_flops(
        text, vision, None, grid, prompt - 100, kept=[10], layer=spec.layer_k, pruner=pruner
    )
    mapping = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops,
        torch.ops.aten.mv: mv_flops,
    }
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        _, kv, _ = time_prefill(model, {**inputs, **arm_kwargs([pruner], kept=10)[pruner]})
    assert kv == prompt - 100 + 10
    assert counter.get_total_flops() == pytest.approx(expected.total, rel=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_help_lists_the_pruners_the_registry_allows(family):
    assert valid_pruners(family) == BENCH_PRUNERS


def test_closest_grid():
    assert [closest_grid(n) for n in (64, 1024, 2048, 4096, 8192, 2000)] == [
        (8, 8), (32, 32), (32, 64), (64, 64), (64, 128), (40, 50)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--pruners", "glimpse,nope", "valid for qwen2_5_vl: glimpse, cdpruner, divprune, fastv, gprune, random"),
        ("--pruners", "visionzip", "unknown ['visionzip']"),
        ("--keep-ratio", "0", "--keep-ratio must be in (0, 1]"),
        ("--keep-ratio", "1.5", "--keep-ratio must be in (0, 1]"),
        ("--visual-tokens", "64,abc", "comma-separated integers"),
    ],
)
def test_bad_input_is_a_clear_error(flag, value, message, tmp_path, capsys):
    assert main(["bench", flag, value, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glimpserl bench: error:") and message in err
    assert not any(tmp_path.iterdir())  # failed before measuring anything
