"""LLaVA-1.5 through the family seam: the tiny offline builder, the same equivalences as Qwen (keep-all = vanilla, KV
cache = text + kept, ragged = per sample, hard mask = removal, training forward = generation), the LLaVA read-out
and CLIP features, VisionZip on CLS attention, and the three trainers on the real TRL classes."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_hard_mask_equals_removal,
    assert_keep_all_matches_vanilla,
    assert_shared_teacher_matches_vanilla,
    batch,
    image,
)
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

from glimpserl.models import GlimpseConfig, add_glimpse, get_adapter, glimpse_module
from glimpserl.models.baselines import TrainingFreePruner
from glimpserl.models.loading import load_processor
from glimpserl.models.tiny import build_tiny_model, build_tiny_processor, save_tiny

QUESTIONS = ["What colour is the square?", "Which digit is written in the box on the left?"]
IMAGES = [[image(112, 112, 0)], [image(84, 168, 1)]]
TOKENS = 64  # 112 px / 14 px patches = 8 x 8 per image


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor("llava")


@pytest.fixture(scope="module")
def inputs(processor):
    return batch(processor, QUESTIONS, IMAGES)


def _model(processor, seed=0, **config):
    return add_glimpse(build_tiny_model("llava", seed=seed, tokenizer=processor), GlimpseConfig(**config))


# ---- the tiny builder ----------------------------------------------------------------------------------------------


def test_tiny_llava_processor_expands_each_image_to_its_patch_tokens(processor, inputs):
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}], add_generation_prompt=True
    )
    assert text == "USER: <image>\nHi? ASSISTANT:"
    assert processor.num_additional_image_tokens == 1 and processor.vision_feature_select_strategy == "default"
    image_id = processor.image_token_id
    assert (inputs["input_ids"] == image_id).sum(1).tolist() == [TOKENS, TOKENS]  # CLS dropped: 65 - 1
    assert inputs["pixel_values"].shape == (2, 3, 112, 112)
    assert inputs["attention_mask"][0, 0] == 0 and inputs["attention_mask"][1, 0] == 1  # left padding
    first = inputs["input_ids"][1, 0].item()
    assert first == processor.tokenizer.bos_token_id  # Llama's tokenizer starts with <s>


def test_tiny_llava_saves_and_reloads_offline(tmp_path, processor, inputs):
    folder = save_tiny(tmp_path / "tiny", "llava", seed=3)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    reloaded = AutoProcessor.from_pretrained(folder)
    assert isinstance(model, LlavaForConditionalGeneration) and type(reloaded).__name__ == "LlavaProcessor"
    assert reloaded.tokenizer.padding_side == "left"
    again = batch(reloaded, QUESTIONS, IMAGES)
    assert all(torch.equal(again[k], inputs[k]) for k in inputs)
    built = build_tiny_model("llava", seed=3)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, built(**inputs).logits)
    assert load_processor("builtin:tiny-llava").image_token_id == processor.image_token_id
    with pytest.raises(ValueError, match="min_pixels / max_pixels do not apply to LLaVA"):
        load_processor("builtin:tiny-llava", max_pixels=112 * 112)


# ---- equivalences (the Qwen family's, on LLaVA) --------------------------------------------------------------------


def test_keep_all_matches_vanilla_logits_and_generation(processor, inputs):
    model = build_tiny_model("llava", seed=0, tokenizer=processor)
    assert_keep_all_matches_vanilla(model, inputs)


def test_capped_prune_shrinks_kv_cache_to_text_plus_kept(processor, inputs):
    model = _model(processor, max_keep_ratio=0.25)
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    result = out.glimpse
    assert result.num_kept.tolist() == [TOKENS // 4] * 2 and result.num_visual.tolist() == [TOKENS] * 2
    text = (inputs["attention_mask"].bool() & ~result.visual_mask).sum(1)
    assert out.cache.get_seq_length() == int((text + result.num_kept).max())
    assert all(layer.keys.shape[2] == int((text + result.num_kept).max()) for layer in out.cache.layers)
    assert result.image_grids == [[(8, 8)], [(8, 8)]]


def test_ragged_pruned_generation_equals_each_sample_alone(processor, inputs):
    model = _model(processor, max_keep_ratio=0.25)
    with torch.no_grad():
        together = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    width = inputs["input_ids"].shape[1]
    for i in range(2):
        alone = batch(processor, [QUESTIONS[i]], [IMAGES[i]])
        with torch.no_grad():
            single = model.generate(**alone, max_new_tokens=8, do_sample=False)
        assert torch.equal(single[0, alone["input_ids"].shape[1] :], together[i, width:])


def test_hard_masked_mode_equals_physical_removal(processor, inputs):
    assert_hard_mask_equals_removal(_model(processor, max_keep_ratio=0.3), inputs)


def test_training_forward_with_completion_matches_generation(processor, inputs):
    """A log-prob pass (no position_ids, as TRL calls it) sees what generation saw, token for token; generation passed
    left-padded rows positions from the attention mask, and 1-D RoPE only sees position differences."""
    model = _model(processor, max_keep_ratio=0.25)
    prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        gen = model.generate(
            **inputs, max_new_tokens=6, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
        full = dict(inputs, input_ids=gen.sequences)
        full["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(gen.sequences[:, prompt:])], 1)
        out = model(**full, glimpse_prompt_length=prompt)
    assert (out.logits[:, -7:-1] - torch.stack(gen.scores, dim=1)).abs().max() <= 1e-4
    assert torch.equal(out.glimpse.keep_mask[:, :prompt], gen.cache.glimpse_state.result.keep_mask)


# ---- what is LLaVA's own ---------------------------------------------------------------------------------------------


def test_glimpse_defaults_follow_the_method():
    """CLIP-L (24 blocks, projector on hidden state -2): the VIP reads hidden states 23, 17, 11, 5 = blocks 22, 16,
    10, 4; the read-out is a log-softmax."""
    adapter = get_adapter(SimpleNamespace(config=LlavaConfig()))
    inner = SimpleNamespace(config=LlavaConfig())
    assert adapter.default_feature_layers(inner, 4) == [22, 16, 10, 4]
    assert adapter.default_readout == "log_softmax"
    config = GlimpseConfig().resolve(32, 24, adapter.default_readout, adapter.default_feature_layers(inner, 4))
    assert (config.layer, config.readout, config.vision_feature_layers) == (21, "log_softmax", [22, 16, 10, 4])


def test_vip_reads_clip_hidden_states_without_cls_and_a_log_softmax(processor, inputs):
    model = _model(processor, vision_feature_layers=[2, 0, 1, 3])
    inner = model.model
    seen = {}
    handle = glimpse_module(model).vip.register_forward_pre_hook(lambda _m, args: seen.setdefault("args", args))
    with torch.no_grad():
        model(**inputs)
        hidden = inner.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states
    handle.remove()
    readout, vision, rows, cols, token_mask, state = seen["args"]
    assert state is None  # no state read-out unless the config asks for one
    assert [v.shape for v in vision] == [(2, TOKENS, 64)] * 4
    for feats, block in zip(vision, [2, 0, 1, 3]):
        assert torch.equal(feats, hidden[block + 1][:, 1:])  # block i's output, CLS dropped
    assert rows[0].tolist() == [i // 8 for i in range(TOKENS)] and cols[0].tolist() == [i % 8 for i in range(TOKENS)]
    # Log-probabilities of the glimpse's attention: never above 0, and the visual keys hold part of the mass.
    assert (readout <= 0).all() and (readout.logsumexp(1) < 0).all()


def test_visionzip_ranks_by_the_cls_attention_clip_itself_computes(processor, inputs):
    """dominant_fraction 1: exactly the top tokens by CLS attention at the projector's feature block, checked against
    the eager CLIP attention weights of the same model."""
    model = _model(processor)
    pruner = TrainingFreePruner.build("visionzip", keep_ratio=0.25, dominant_fraction=1.0)
    with torch.no_grad():
        keep = model(**inputs, glimpse_pruner=pruner).glimpse
        eager = build_tiny_model("llava", seed=0, tokenizer=processor, attn_implementation="eager")
        attentions = eager.model.vision_tower(inputs["pixel_values"], output_attentions=True).attentions
    block = len(attentions) - 2  # vision_feature_layer -2 is block N - 2's output
    cls = attentions[block][:, :, 0, 1:].mean(1)
    for b in range(2):
        expected = torch.zeros(TOKENS, dtype=torch.bool)
        expected[cls[b].topk(TOKENS // 4).indices] = True
        assert torch.equal(keep.keep_mask[b][keep.visual_mask[b]], expected)
    assert keep.num_kept.tolist() == [TOKENS // 4] * 2


def test_lora_targets_the_llama_linears_only(processor):
    from peft import LoraConfig, get_peft_model

    model = _model(processor)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=get_adapter(model).lora_target_modules()))
    adapted = {n.split(".lora_A")[0] for n, _ in peft.named_parameters() if "lora_A" in n}
    assert len(adapted) == 4 * 7 and all(".language_model.layers." in n for n in adapted)


def test_prompt_cut_through_image_tokens_is_a_clear_error(processor, inputs):
    model = _model(processor)
    ids = inputs["input_ids"].clone()
    ids[0, (ids[0] == processor.image_token_id).nonzero()[0, 0]] = 5
    with pytest.raises(ValueError, match="image tokens do not match"):
        model(**dict(inputs, input_ids=ids))


def test_shared_teacher_is_the_vanilla_model(processor, inputs):
    assert_shared_teacher_matches_vanilla(_model(processor).eval(), inputs)


def test_soft_masked_mode_trains_the_vip(processor, inputs):
    model = _model(processor)
    out = model(**inputs, glimpse_mode="mask", glimpse_mask_fn=lambda logits, visual: F.logsigmoid(logits))
    out.logits[:, -1].logsumexp(-1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in glimpse_module(model).parameters())
    assert math.isfinite(out.glimpse.keep_prob.sum().item())


def test_inputs_the_glimpse_cannot_prune_are_refused(processor, inputs):
    model = _model(processor)
    with torch.no_grad():
        encoded = model.model.get_image_features(inputs["pixel_values"], return_dict=True)
    with pytest.raises(ValueError, match="runs the vision encoder itself"):
        model(**inputs, mm_encoder_outputs={"image": encoded})
    with pytest.raises(ValueError, match="image_sizes"):
        model(**inputs, image_sizes=torch.tensor([[112, 112], [112, 112]]))


def test_two_images_per_sample(processor):
    inputs = batch(
        processor,
        ["Compare the two pictures.", "What is shown?"],
        [[image(56, 112, 2), image(112, 56, 3)], [image(84, 84, 4)]],
    )
    model = _model(processor, max_keep_ratio=0.5)
    with torch.no_grad():
        out = model(**inputs)
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert [[i["visual_tokens"] for i in s["images"]] for s in out.glimpse.stats()] == [[TOKENS, TOKENS], [TOKENS]]
    assert all(i["kept_tokens"] == TOKENS // 2 for s in out.glimpse.stats() for i in s["images"])
    assert gen.shape == (2, inputs["input_ids"].shape[1] + 3)


def test_transformers_internals_the_llava_family_uses():
    """What models/llava/ reads from transformers: a clear failure here on an upgrade beats a wrong mask later."""
    import inspect

    from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, apply_rotary_pos_emb
    from transformers.models.llava.modeling_llava import LlavaModel

    params = inspect.signature(LlavaModel.get_image_features).parameters
    assert {"vision_feature_layer", "vision_feature_select_strategy"} <= set(params)
    assert "cache" in inspect.signature(LlamaDecoderLayer.forward).parameters
    assert list(inspect.signature(apply_rotary_pos_emb).parameters)[:4] == ["q", "k", "cos", "sin"]
    attn = CLIPAttention(LlavaConfig().vision_config)
    assert (
        {"num_heads", "head_dim", "scale"} <= set(vars(attn)) and hasattr(attn, "q_proj") and hasattr(attn, "k_proj")
    )
    assert "layer_norm1" in inspect.getsource(CLIPEncoderLayer.__init__)
