"""Published model shapes by name, for the benchmarks' `--shape` flag (no torch import: the CLI parser reads it).

Qwen2.5-VL only, by design: the benchmarks build a Qwen2.5-VL (see benchmarks/measure.py); a shape names the published
architecture configuration, built with random weights on the device (timing and memory do not depend on the
weights). Each preset's numbers are those of the model's config.json on the hub, written out below; a test builds
each preset's transformers config and compares it with this text.

qwen2_5_vl_7b (Qwen/Qwen2.5-VL-7B-Instruct): text hidden 3584, layers 28, heads 28, kv heads 4, intermediate 18944,
vocab 152064, tied false; vision layers 32, hidden 1280, heads 16, intermediate 3420; K 18.

qwen2_5_vl_3b (Qwen/Qwen2.5-VL-3B-Instruct): text hidden 2048, layers 36, heads 16, kv heads 2, intermediate 11008,
vocab 151936, tied true; vision layers 32, hidden 1280, heads 16, intermediate 3420; K 23.

Both: rope theta 1e6, M-RoPE sections 16 / 24 / 24 (head size 128), vision patch 14 merged 2 x 2 (28 px per visual
token), window 112 px with full attention in blocks 7, 15, 23 and 31. K is the method's glimpse layer (the recipes'
`glimpse_layer`), about 2/3 of the decoder: pruning after K leaves K + 1 of L layers on every token, which bounds
the prefill saving (at most (L - K - 1) / L).
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
}
