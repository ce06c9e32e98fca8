"""Published model shapes by name, for the benchmarks' `--shape` flag (no torch import: the CLI parser reads it).

A shape names the published architecture configuration of one model of a family the benchmarks build
(benchmarks/families.py), made with random weights on the device (timing and memory do not depend on the weights).
Each preset's numbers are those of the model's config.json on the hub, written out below; a test builds each
preset's transformers config and compares it with this text.

qwen2_5_vl_7b (Qwen/Qwen2.5-VL-7B-Instruct): text hidden 3584, layers 28, heads 28, kv heads 4, intermediate 18944,
vocab 152064, tied false; vision layers 32, hidden 1280, heads 16, intermediate 3420; K 18.

qwen2_5_vl_3b (Qwen/Qwen2.5-VL-3B-Instruct): text hidden 2048, layers 36, heads 16, kv heads 2, intermediate 11008,
vocab 151936, tied true; vision layers 32, hidden 1280, heads 16, intermediate 3420; K 23.

Both Qwen2.5-VL: rope theta 1e6, M-RoPE sections 16 / 24 / 24 (head size 128), vision patch 14 merged 2 x 2 (28 px
per visual token), window 112 px with full attention in blocks 7, 15, 23 and 31.

qwen3_vl_8b (Qwen/Qwen3-VL-8B-Instruct): text hidden 4096, layers 36, heads 32, kv heads 8, intermediate 12288,
vocab 151936, tied false; vision layers 27, hidden 1152, heads 16, intermediate 4304; K 23.

Qwen3-VL-8B: head size 128, rope theta 5e6, interleaved M-RoPE sections 24 / 20 / 20, context 262144; vision patch 16
merged 2 x 2 (32 px per visual token), full attention in every block, a 2-linear GELU (tanh) MLP, 2304 learned
position embeddings (a 48 x 48 grid resampled to each image), DeepStack from blocks 8, 16 and 24 into decoder layers
0-2 (a merger each, beside the final one). No published K: 23 of 36 layers, the K of Qwen2.5-VL-3B's 36.

llava_1_5_7b (llava-hf/llava-1.5-7b-hf): text hidden 4096, layers 32, heads 32, kv heads 32, intermediate 11008,
vocab 32064, tied false; vision layers 24, hidden 1024, heads 16, intermediate 4096; K 21.

LLaVA-1.5-7B: a Vicuna (Llama) decoder, rope theta 1e4, context 4096; a CLIP ViT-L/14 at 336 px (24 x 24 = 576
visual tokens per image, fixed, plus a CLS token the projector drops; features of the second-to-last block) and a
2-linear GELU projector 1024 -> 4096 -> 4096. K 21 is the method's for LLaVA-1.5.

K is the method's glimpse layer (the recipes' `glimpse_layer`), about 2/3 of the decoder: pruning after K leaves
K + 1 of L layers on every token, which bounds the prefill saving (at most (L - K - 1) / L).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """The shape flags of one published model (the names of `benchmarks.arguments.add_model_arguments`' flags)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    vision_layers: int
    vision_hidden: int
    vision_heads: int
    vision_intermediate: int
    layer_k: int
    source: str
    """The hub id whose config.json the numbers come from."""
    family: str = "qwen2_5_vl"
    """The model type (benchmarks/families.py builds it and knows its fixed architecture constants)."""


QWEN2_5_VL_VISION = dict(vision_layers=32, vision_hidden=1280, vision_heads=16, vision_intermediate=3420)

SHAPES: dict[str, Shape] = {
    "qwen2_5_vl_7b": Shape(
        hidden=3584,
        layers=28,
        heads=28,
        kv_heads=4,
        intermediate=18944,
        vocab=152064,
        tied=False,
        layer_k=18,
        source="Qwen/Qwen2.5-VL-7B-Instruct",
        **QWEN2_5_VL_VISION,
    ),  # fmt: skip
    "qwen2_5_vl_3b": Shape(
        hidden=2048,
        layers=36,
        heads=16,
        kv_heads=2,
        intermediate=11008,
        vocab=151936,
        tied=True,
        layer_k=23,
        source="Qwen/Qwen2.5-VL-3B-Instruct",
        **QWEN2_5_VL_VISION,
    ),  # fmt: skip
    "qwen3_vl_8b": Shape(
        hidden=4096,
        layers=36,
        heads=32,
        kv_heads=8,
        intermediate=12288,
        vocab=151936,
        tied=False,
        vision_layers=27,
        vision_hidden=1152,
        vision_heads=16,
        vision_intermediate=4304,
        layer_k=23,
        source="Qwen/Qwen3-VL-8B-Instruct",
        family="qwen3_vl",
    ),
    "llava_1_5_7b": Shape(
        hidden=4096,
        layers=32,
        heads=32,
        kv_heads=32,
        intermediate=11008,
        vocab=32064,
        tied=False,
        vision_layers=24,
        vision_hidden=1024,
        vision_heads=16,
        vision_intermediate=4096,
        layer_k=21,
        source="llava-hf/llava-1.5-7b-hf",
        family="llava",
    ),
}
