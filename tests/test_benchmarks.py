"""The prefill/decode benchmark: its analytic FLOP counter (by hand and against the FLOPs torch actually executes) and
a smoke run of the whole benchmark at a tiny size. No timing assertions."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cpu_sdpa_flops
from torch.utils.flop_counter import FlopCounterMode

from glimpserl.benchmarks import flops
from glimpserl.benchmarks.arguments import FAMILIES
from glimpserl.benchmarks.families import family_of
from glimpserl.benchmarks.measure import ARMS, ModelSpec, build_arm, build_inputs, time_prefill
from glimpserl.benchmarks.prefill_decode import analytic_flops, main, token_counts

TINY_ARGS = ["--hidden", "64", "--layers", "4", "--heads", "4", "--kv-heads", "2", "--vision-hidden", "32"]
TINY_ARGS += ["--vision-layers", "4", "--visual-tokens", "64", "--keep-ratio", "0.25"]

TEXT = flops.TextShape(hidden=8, layers=3, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)


def test_linear_and_attention_counts_by_hand():
    assert flops.linear(3, 4, 5) == 2 * 3 * 4 * 5
    assert flops.causal_pairs(4) == 4 + 3 + 2 + 1
    assert flops.attention(pairs=3, heads=2, head_dim=4) == 2 * 2 * 3 * 2 * 4


def test_decoder_layer_count_by_hand():
    # 2 tokens: q, o 2*2*8*8 each; k, v 2*2*8*4 each; gate/up/down 2*2*8*16 each; 3 causal pairs * 2 heads * 4 dims.
    expected = 2 * 256 + 2 * 128 + 3 * 512 + 4 * 3 * 2 * 4
    assert flops.decoder_layer_flops(TEXT, tokens=2) == expected


def test_keep_all_costs_more_than_unpruned_by_exactly_the_glimpse_and_vip():
    vision = flops.VisionShape(32, 4, 2, 64, 1176, 2, 4, (3,), merger=((128, 128), (128, 8)))
    vip = flops.VIPShape(hidden=16, intermediate=32, blocks=2, readout_heads=2, vision_size=32)
    grid = [(1, 8, 12)]  # 24 visual tokens
    unpruned = flops.prefill_flops(TEXT, vision, vip, grid, text_tokens=10)
    keep_all = flops.prefill_flops(TEXT, vision, vip, grid, text_tokens=10, kept=[24], layer=1)
    assert keep_all.decoder_full + keep_all.decoder_pruned == unpruned.decoder_full
    assert keep_all.total == unpruned.total + keep_all.glimpse + keep_all.vip > unpruned.total
    keep_some = flops.prefill_flops(TEXT, vision, vip, grid, text_tokens=10, kept=[2], layer=1)
    assert keep_some.total < keep_all.total


def test_simple_bound():
    assert flops.simple_bound(layer=8, layers=12, kept_plus_text=250, all_tokens=2000) == pytest.approx(
        0.75 + 0.25 * 0.125
    )
    assert flops.simple_bound(layer=2, layers=3, kept_plus_text=5, all_tokens=100) == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_analytic_count_equals_the_flops_torch_executes(family):
    """Every benchmarked family's vision tower (windowed / full, gated / 2-linear MLP, CLS token, DeepStack
    mergers, projector), decoder, glimpse and VIP, counted by hand, against what torch executes."""
    spec = ModelSpec(64, 4, 4, 2, 320, 2, 32, 8, 2, visual_tokens=300, keep_ratio=0.25, family=family)
    device = torch.device("cpu")
    processor, inputs = build_inputs(spec, device)
    pruned = build_arm(spec, processor, device, "pruned")
    models = {"pruned": pruned, "unpruned": build_arm(spec, processor, device, "unpruned", pruned=pruned)}
    counts = token_counts(models, inputs)
    analytic = analytic_flops(pruned, inputs, counts, spec.layer_k)
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flops}
    for arm in ARMS:
        models[arm].requires_grad_(False)  # FlopCounterMode's module tracker hooks autograd otherwise
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            time_prefill(models[arm], inputs)
        assert counter.get_total_flops() == pytest.approx(analytic[arm]["total"], rel=1e-3), arm


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_benchmark_smoke(tmp_path, family, capsys):
    out = tmp_path / "bench.json"
    args = [*TINY_ARGS, "--family", family, "--new-tokens", "2", "--repeats", "1", "--threads", "1"]
    results = main([*args, "--json", str(out)])
    assert f"Model: {family_of(family).label}-shaped," in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["tokens"] == results["tokens"]
    tokens = saved["tokens"]
    assert tokens["visual"] >= 64 and tokens["kept"] == int(0.25 * tokens["visual"])
    assert saved["pruned"]["kv_length"] == tokens["text"] + tokens["kept"]
    assert saved["unpruned"]["kv_length"] == tokens["prompt"]
    for arm in ARMS:
        assert {"prefill_s", "prefill_cpu_s", "decode_s_per_token", "kv_length", "peak_memory"} <= set(saved[arm])
        assert saved[arm]["prefill_s"]["median"] > 0 and saved[arm]["peak_memory"]["delta"] >= 0
    assert {"prefill_s", "decode_s_per_token", "kv_length", "peak_memory"} <= set(saved["ratios"])
    assert {"bound", "simple_bound", "unpruned", "pruned"} <= set(saved["flops"])
    assert saved["flops"]["bound"] == saved["flops"]["pruned"]["total"] / saved["flops"]["unpruned"]["total"]
    assert "prefill_over_bound" in saved
