"""Training-free pruners inside the pruned forward: same removal, positions and KV handling as the glimpse."""

import math

import pytest
import torch
from helpers import batch, image

from glimpserl.models import GlimpseConfig, add_glimpse
from glimpserl.models.baselines import TrainingFreePruner
from glimpserl.models.forward import _last_token_attention
from glimpserl.models.tiny import build_tiny_model


@pytest.fixture(scope="module")
def model():
    return add_glimpse(build_tiny_model("qwen2_5_vl", seed=0).eval(), GlimpseConfig(layer=2))


@pytest.fixture(scope="module")
def inputs(tiny_processor):
    return batch(
        tiny_processor,
        ["What colour is the square?", "Which digit is in the box?"],
        [[image(112, 112, 0)], [image(84, 168, 1)]],
    )


@pytest.mark.parametrize("name", ["gprune", "fastv", "divprune", "cdpruner", "random"])
def test_pruner_keeps_the_budget_and_shrinks_the_cache(model, inputs, name):
    pruner = TrainingFreePruner.build(name, keep_ratio=0.25)
    with torch.no_grad():
        out = model(**inputs, glimpse_pruner=pruner, use_cache=True)
        gen = model.generate(**inputs, glimpse_pruner=pruner, max_new_tokens=3, do_sample=False)
    result = out.glimpse
    assert result.num_kept.tolist() == [math.floor(0.25 * n + 0.5) for n in result.num_visual.tolist()]
    text = (inputs["attention_mask"].bool() & ~result.visual_mask).sum(1)
    assert out.cache.get_seq_length() == int((text + result.num_kept).max())
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 3


def test_fastv_keeps_the_tokens_the_last_prompt_token_attends_to_most(model, inputs):
    """Recompute FastV's signal at layer K from the vanilla model's hidden states and check the selection."""
    with torch.no_grad():
        out = model(**inputs, glimpse_pruner=TrainingFreePruner.build("fastv", keep_ratio=0.25))
        vanilla = model(**inputs, glimpse_mode="off", output_hidden_states=True)
    text_model = model.model.language_model
    layer_k = model.model.glimpse.config.layer
    h = vanilla.hidden_states[layer_k]  # input of layer K
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    rope = text_model.rotary_emb(h, positions)
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

    with torch.no_grad():
        attn = _last_token_attention(
            text_model.layers[layer_k], h, rope, inputs["attention_mask"], apply_rotary_pos_emb
        )
    result = out.glimpse
    for b in range(2):
        visual = result.visual_mask[b]
        scores = attn[b][visual]
        kept = result.keep_mask[b][visual]
        k = int(kept.sum())
        assert torch.equal(kept, torch.zeros_like(kept).index_fill(0, scores.topk(k).indices, True))


def test_random_pruner_is_reproducible_by_seed(model, inputs):
    with torch.no_grad():
        a = model(**inputs, glimpse_pruner=TrainingFreePruner.build("random", keep_ratio=0.3, seed=1)).glimpse
        b = model(**inputs, glimpse_pruner=TrainingFreePruner.build("random", keep_ratio=0.3, seed=1)).glimpse
        c = model(**inputs, glimpse_pruner=TrainingFreePruner.build("random", keep_ratio=0.3, seed=2)).glimpse
    assert torch.equal(a.keep_mask, b.keep_mask) and not torch.equal(a.keep_mask, c.keep_mask)


def test_pruner_bad_input_is_a_clear_error(model, inputs):
    with pytest.raises(ValueError, match="unknown token selector 'gprun'.*valid names"):
        TrainingFreePruner.build("gprun", keep_ratio=0.5)
    with pytest.raises(ValueError, match=r"keep_ratio must be in \(0, 1\]"):
        TrainingFreePruner.build("gprune", keep_ratio=1.5)
    with pytest.raises(ValueError, match="exactly one of keep_ratio or budget"):
        TrainingFreePruner.build("gprune")
    with pytest.raises(ValueError, match="vision-encoder attention"), torch.no_grad():
        model(**inputs, glimpse_pruner=TrainingFreePruner.build("visionzip", keep_ratio=0.5))


def test_cdpruner_reads_the_instruction_after_the_image(model, inputs):
    """The instruction signal is the prompt's text after the image: the same image with another question can keep
    other tokens, and the selection equals the selector run by hand on those features."""
    from glimpserl.models.baselines import build_selector, keep_count

    pruner = TrainingFreePruner.build("cdpruner", keep_ratio=0.25)
    with torch.no_grad():
        result = model(**inputs, glimpse_pruner=pruner).glimpse
        embeds = model.model.get_input_embeddings()(inputs["input_ids"])
        image_embeds = torch.cat(
            model.model.get_image_features(
                inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
            ).pooler_output
        )
    visual = result.visual_mask
    embeds[visual] = image_embeds
    for b in range(2):
        columns = visual[b].nonzero().flatten()
        after = inputs["attention_mask"][b].bool() & ~visual[b]
        after[: int(columns[-1]) + 1] = False
        n = len(columns)
        expected = build_selector("cdpruner").select(
            features=embeds[b, columns], keep=keep_count(n, keep_ratio=0.25), instruction=embeds[b, after]
        )
        assert torch.equal(result.keep_mask[b][visual[b]], expected)


def test_input_layer_pruning_runs_the_whole_decoder_on_the_kept_tokens_only(model, inputs):
    """layer=-1 (pruning before the LLM, G-Prune / DivPrune's native point): the output equals the plain decoder
    run on the gathered input embeddings with their original positions, and every cached layer is short."""
    pruner = TrainingFreePruner.build("random", keep_ratio=0.3, seed=3, layer=-1)
    with torch.no_grad():
        out = model(**inputs, glimpse_pruner=pruner, use_cache=True)
        embeds = model.model.get_input_embeddings()(inputs["input_ids"])
        image_embeds = torch.cat(
            model.model.get_image_features(
                inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True
            ).pooler_output
        )
        positions, _ = model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"], inputs["attention_mask"]
        )
    result = out.glimpse
    embeds[result.visual_mask] = image_embeds
    index = result.kept_index
    valid = result.keep_mask.gather(1, index)
    gathered = embeds.gather(1, index[..., None].expand(-1, -1, embeds.shape[-1]))
    kept_positions = positions.gather(2, index[None].expand(3, -1, -1))
    with torch.no_grad():
        plain = model.model.language_model(
            inputs_embeds=gathered, position_ids=kept_positions, attention_mask=valid.long(), use_cache=False
        ).last_hidden_state
        plain_logits = model.lm_head(plain[:, -1])
    assert torch.allclose(out.logits[:, -1], plain_logits, atol=1e-5)
    text = (inputs["attention_mask"].bool() & ~result.visual_mask).sum(1)
    lengths = {layer.keys.shape[2] for layer in out.cache.layers}
    assert lengths == {int((text + result.num_kept).max())}
    with pytest.raises(ValueError, match="cannot prune the input"):
        TrainingFreePruner.build("fastv", keep_ratio=0.5, layer=-1)
