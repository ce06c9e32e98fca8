"""Offline builder of a tiny random LLaVA-1.5 (tiny CLIP vision tower + tiny Llama) with a working processor.

Everything is built in-process: a Llama tokenizer (byte-fallback BPE with Metaspace, trained in milliseconds on the
built-in text) holding `<image>`, a Vicuna-style chat template, the PIL CLIP image processor resizing every image to
one square, and the stock `LlavaProcessor` (num_additional_image_tokens=1: the CLS token the projector drops).

    from glimpserl.models.llava.tiny import build_tiny_model, build_tiny_processor, save_tiny

    processor = build_tiny_processor()     # 112 px images: 8 x 8 = 64 visual tokens each
    model = build_tiny_model(seed=0)       # LlavaForConditionalGeneration, fp32, ~1.2M params
"""

from __future__ import annotations

import json
import pathlib

import torch
from tokenizers import Tokenizer, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaTokenizer,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from ..random_init import instantiate
from ..tiny_text import tiny_corpus

IMAGE_SIZE = 112
PATCH_SIZE = 14
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
"""Llama's first three ids; 256 byte tokens follow (byte fallback), then the learned BPE tokens."""
ADDED_TOKENS = ("<pad>", "<image>")
"""After the vocabulary, as in llava-hf's LLaVA-1.5 checkpoints."""

# The Vicuna v1 turn format LLaVA-1.5 was tuned with: "SYSTEM USER: <image>\nQUESTION ASSISTANT: ANSWER</s>".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %} "
    "{% else %}"
    "{{ message['role'] | upper }}: "
    "{% for part in parts %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _train_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A Metaspace BPE on the built-in text, laid out like Llama's vocabulary: specials, 256 bytes, learned."""
    bpe = Tokenizer(BPE())
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=1500, min_frequency=1, show_progress=False)
    lines = [*tiny_corpus(), *["USER: ASSISTANT:"] * 8]  # the role names become whole tokens
    bpe.train_from_iterator(lines, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"<0x{byte:02X}>": len(SPECIAL_TOKENS) + byte for byte in range(256)})
    for token in sorted(model["vocab"], key=model["vocab"].get):
        vocab.setdefault(token, len(vocab))
    return vocab, [tuple(merge) for merge in model["merges"]]


def build_tiny_tokenizer() -> LlamaTokenizer:
    """A left-padding Llama tokenizer (~1.8k tokens) that adds <s> and knows <pad> and <image>."""
    vocab, merges = _train_bpe()
    tokenizer = LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        pad_token="<pad>",
        add_bos_token=True,
        # Constructor only: a later `tokenizer.padding_side = "left"` is not saved with the tokenizer.
        padding_side="left",
        model_max_length=4096,
        extra_special_tokens={"image_token": "<image>"},
    )
    if [tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS] != [len(vocab), len(vocab) + 1]:
        raise RuntimeError("The tiny LLaVA tokenizer's <pad> / <image> ids are not the ones after its vocabulary.")
    return tokenizer


def build_tiny_processor(image_size: int = IMAGE_SIZE) -> LlavaProcessor:
    """`LlavaProcessor` of the tiny model: every image resized (not cropped) to image_size^2, so box coordinates map
    onto the token grid for any aspect ratio; (image_size / 14)^2 visual tokens per image."""
    square = {"height": image_size, "width": image_size}
    return LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size=square, crop_size=square, do_center_crop=False),
        tokenizer=build_tiny_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def _tiny_config(tokenizer, vocab_size, text_layers, text_hidden, vision_layers, image_size, overrides) -> LlavaConfig:
    """Config: Llama with 4 heads / 2 KV heads, CLIP of width 64 with 2 heads and `vision_layers` blocks."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in (*SPECIAL_TOKENS, *ADDED_TOKENS)}
    text = dict(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=PATCH_SIZE,
        projection_dim=64,
    )
    text.update(overrides.pop("text_config", {}))
    vision.update(overrides.pop("vision_config", {}))
    return LlavaConfig(
        text_config=LlamaConfig(**text),
        vision_config=CLIPVisionConfig(**vision),
        image_token_id=ids["<image>"],
        image_seq_length=(image_size // PATCH_SIZE) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        **overrides,
    )


def build_tiny_model(
    seed: int = 0,
    vocab_size: int | None = None,
    text_layers: int = 4,
    text_hidden: int = 128,
    vision_layers: int = 4,
    image_size: int = IMAGE_SIZE,
    attn_implementation: str = "sdpa",
    tokenizer=None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **overrides,
) -> LlavaForConditionalGeneration:
    """A random-init fp32 LLaVA (~1.2M params at the defaults), identical for identical arguments.

    Token ids (image, bos, eos, pad) come from `tokenizer` (a tokenizer or a processor; default: the tiny one).
    `overrides` go to the top-level config; `text_config={...}` / `vision_config={...}` update the sub-configs.
    `device` / `dtype`: where and in what the weights are created (the benchmarks' published shape is built
    directly on a GPU in bfloat16).
    """
    tokenizer = build_tiny_tokenizer() if tokenizer is None else getattr(tokenizer, "tokenizer", tokenizer)
    vocab_size = len(tokenizer) if vocab_size is None else vocab_size
    config = _tiny_config(tokenizer, vocab_size, text_layers, text_hidden, vision_layers, image_size, dict(overrides))
    model = instantiate(LlavaForConditionalGeneration, config, seed, attn_implementation, device, dtype)
    text = config.text_config
    model.generation_config = GenerationConfig(
        eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id, bos_token_id=text.bos_token_id
    )
    return model


def save_tiny(out_dir: str | pathlib.Path, seed: int = 0, **kw) -> pathlib.Path:
    """Write a tiny model and its processor to `out_dir`; both reload offline with `from_pretrained`.

    `kw` goes to `build_tiny_model`; `image_size` to both."""
    out_dir = pathlib.Path(out_dir)
    processor = build_tiny_processor(kw.get("image_size", IMAGE_SIZE))
    model = build_tiny_model(seed=seed, tokenizer=processor, **kw)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
