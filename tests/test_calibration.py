"""The deployment threshold is picked on a validation split for a target keep ratio."""

import dataclasses

import pytest
import torch

from glimpserl.models import GlimpseConfig, add_glimpse, glimpse_module
from glimpserl.models.loading import load_processor
from glimpserl.models.tiny import build_tiny_model
from glimpserl.rl.data import DataConfig, conversation_dataset, load_vqa
from glimpserl.rl.data.synth import write_synth
from glimpserl.rl.eval.glimpse import calibrate_threshold, mean_keep_ratio
from glimpserl.rl.eval.glimpse import prompt_vip_logits as vip_logits


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = write_synth(tmp_path_factory.mktemp("shapes"), 0, 6, 112, 0, task="shapes")
    config = DataConfig(dataset=str(folder / "test.jsonl"), max_pixels=112 * 112)
    rows, _ = load_vqa(config)
    torch.manual_seed(0)
    model = add_glimpse(build_tiny_model(seed=0), GlimpseConfig(layer=1, vip_hidden_size=32, vip_num_heads=2))
    with torch.no_grad():  # spread the VIP's logits so that thresholds separate tokens
        glimpse_module(model).vip.out_proj.weight.mul_(200.0)
        glimpse_module(model).vip.out_proj.bias.zero_()
    return model, load_processor("builtin:tiny-qwen2_5_vl", max_pixels=112 * 112), conversation_dataset(rows, config)


def _ratio(batches, config, threshold):
    return mean_keep_ratio(batches, dataclasses.replace(config, threshold=threshold))


@pytest.mark.parametrize("target", [0.1, 0.3, 0.6])
def test_calibrated_threshold_is_the_one_whose_keep_ratio_is_nearest_the_target(setup, target):
    model, processor, samples = setup
    found = calibrate_threshold(model, processor, samples, target, batch_size=3)
    batches = vip_logits(model, processor, samples, batch_size=3)
    config = glimpse_module(model).config
    assert found["keep_ratio"] == pytest.approx(_ratio(batches, config, found["threshold"]))
    # Every keep ratio a threshold can give: cut just below each token's keep probability.
    probs = sorted({round(float(p), 6) for logits, visual in batches for p in torch.sigmoid(logits[visual])})
    reachable = {_ratio(batches, config, max(p - 1e-7, 0.0)) for p in probs} | {_ratio(batches, config, 0.9999)}
    best = min(abs(r - target) for r in reachable)
    # At least as near as every enumerated ratio (the enumeration can miss one where saturated probabilities tie).
    assert abs(found["keep_ratio"] - target) <= best + 1e-6
    ratios = [_ratio(batches, config, t) for t in (0.1, 0.5, 0.9)]
    assert ratios == sorted(ratios, reverse=True)
    assert found["rows"] == 6 and found["target_keep_ratio"] == target
