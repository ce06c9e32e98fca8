"""The benchmarks' family seam: how one model type is built at a benchmark shape, fed an image of a given token grid,
and counted by the analytic FLOP model (benchmarks/flops.py).

Three families, one entry each in `FAMILIES`:
- qwen2_5_vl: dynamic resolution, 28 px per visual token, windowed vision attention (full in every 8th block),
  SwiGLU vision MLP, one 2x2 merger;
- qwen3_vl: dynamic resolution, 32 px per visual token, full vision attention, 2-linear GELU MLP, learned position
  embeddings resampled to the image, DeepStack (three more mergers whose outputs are added in decoder layers 0-2);
- llava: a fixed square image (the CLIP tower's position table has one entry per patch), 14 px per visual token plus
  a CLS token, a 2-linear projector; its token count is set by the configured image size.

A benchmark spec (`measure.ModelSpec`) carries the widths and depths (the --shape flags); what a family fixes beyond
them (patch size, rope, DeepStack blocks, position table) is written here once, equal to the published models'
values (benchmarks/shapes.py states them; a test compares).
"""

from __future__ import annotations

import math

from glimpserl.benchmarks import flops


def _mrope_section(head_dim: int, spatial_share: float) -> list[int]:
    """The (temporal, height, width) split of the head_dim / 2 rotary frequencies: Qwen2.5-VL gives 3/8 of them to
    each spatial axis ([16, 24, 24] at head_dim 128), Qwen3-VL 5/16 ([24, 20, 20])."""
    half = head_dim // 2
    spatial = int(half * spatial_share)
    return [half - 2 * spatial, spatial, spatial]


def _square(visual_tokens: int) -> int:
    return math.ceil(math.sqrt(visual_tokens))


class BenchFamily:
    """One model type as the benchmarks use it. Subclasses set the class attributes and implement the config."""

    model_type: str
    label: str
    token_pixels: int
    """Pixels along one side of a visual token."""
    dynamic_resolution = True
    """The token grid follows the image (any rows x columns); else a fixed square set by the configuration."""

    def grid(self, spec) -> tuple[int, int]:
        """(rows, columns) of visual tokens per image: spec.grid, else the smallest square of at least
        spec.visual_tokens. Raises ValueError if the family cannot make it."""
        return spec.grid or (_square(spec.visual_tokens),) * 2

    def image_pixels(self, spec) -> tuple[int, int]:
        """(height, width) in pixels of the benchmark's image."""
        rows, cols = self.grid(spec)
        return rows * self.token_pixels, cols * self.token_pixels

    def processor(self, spec):
        raise NotImplementedError

    def config_kwargs(self, spec) -> dict:
        """Keywords of the family's tiny builder beyond seed, vocabulary, text depth / width, tokenizer, attention,
        device and dtype."""
        raise NotImplementedError

    def build(self, spec, processor, device):
        """A random model of the spec's shape (identical for identical specs), created on `device` in its dtype."""
        from glimpserl.models.tiny import build_tiny_model

        if spec.hidden % spec.heads or spec.heads % spec.kv_heads:
            raise ValueError(f"hidden {spec.hidden} / heads {spec.heads} / kv heads {spec.kv_heads} do not divide.")
        return build_tiny_model(
            self.model_type,
            seed=spec.seed,
            vocab_size=spec.vocab,
            text_layers=spec.layers,
            text_hidden=spec.hidden,
            tokenizer=processor,
            attn_implementation=spec.attn,
            device=device,
            dtype=spec.torch_dtype,
            **self.config_kwargs(spec),
        )

    def vision_shape(self, config) -> flops.VisionShape:
        raise NotImplementedError

    def image_grids(self, config, inputs: dict) -> list[tuple[int, int, int]]:
        """(t, h, w) patch grid of every image of the inputs."""
        return [tuple(g) for g in inputs["image_grid_thw"].tolist()]


class Qwen2_5_VL(BenchFamily):
    model_type, label, token_pixels = "qwen2_5_vl", "Qwen2.5-VL", 28
    rope_theta, context, spatial_share = 1_000_000.0, 128000, 3 / 8

    def processor(self, spec):
        from glimpserl.models.tiny import build_tiny_processor

        rows, cols = self.grid(spec)
        pixels = rows * cols * self.token_pixels**2
        return build_tiny_processor(
            self.model_type, min_pixels=min(pixels, 4 * self.token_pixels**2), max_pixels=pixels
        )

    def text_config(self, spec) -> dict:
        return dict(
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            intermediate_size=spec.intermediate,
            max_position_embeddings=self.context,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": self.rope_theta,
                "mrope_section": _mrope_section(spec.hidden // spec.heads, self.spatial_share),
            },
        )

    def vision_config(self, spec) -> dict:
        # full attention in every 8th block (7, 15, 23, 31 of 32), windows elsewhere
        full = [i for i in range(spec.vision_layers) if i % 8 == 7] or [spec.vision_layers - 1]
        return {**_qwen_vision_dims(spec), "fullatt_block_indexes": full}

    def config_kwargs(self, spec) -> dict:
        return dict(
            text_config=self.text_config(spec), vision_config=self.vision_config(spec), tie_word_embeddings=spec.tied
        )

    def vision_shape(self, config) -> flops.VisionShape:
        v = config.vision_config
        window = v.window_size // v.spatial_merge_size // v.patch_size
        return _qwen_vision_shape(v, window=window, full_blocks=tuple(v.fullatt_block_indexes))


def _qwen_vision_dims(spec) -> dict:
    return dict(
        depth=spec.vision_layers,
        hidden_size=spec.vision_hidden,
        num_heads=spec.vision_heads,
        intermediate_size=spec.vision_intermediate or spec.vision_hidden * 5 // 2,
    )


def _qwen_vision_shape(v, **family) -> flops.VisionShape:
    """A Qwen-VL vision tower's shape: a patch embedding over (temporal, height, width) patches, then a 2-linear
    merger on each 2x2 group of patches; `family` sets the rest (windows, MLP, DeepStack mergers)."""
    merged = v.spatial_merge_size**2 * v.hidden_size
    return flops.VisionShape(
        hidden=v.hidden_size,
        depth=v.depth,
        heads=v.num_heads,
        intermediate=v.intermediate_size,
        patch_volume=v.in_channels * v.temporal_patch_size * v.patch_size**2,
        merge=v.spatial_merge_size,
        merger=((merged, merged), (merged, v.out_hidden_size)),
        **family,
    )


def deepstack_blocks(depth: int) -> list[int]:
    """Qwen3-VL's DeepStack vision blocks, scaled to `depth`: [8, 16, 24] of 27 (Qwen3-VL-8B), [2, 4, 7] of 8."""
    return sorted({depth * j * 8 // 27 for j in (1, 2, 3)})


class Qwen3_VL(Qwen2_5_VL):
    model_type, label, token_pixels = "qwen3_vl", "Qwen3-VL", 32
    rope_theta, context, spatial_share = 5_000_000.0, 262144, 5 / 16
    position_embeddings = 2304
    """A 48 x 48 learned table, resampled to each image's patch grid."""

    def text_config(self, spec) -> dict:
        text = super().text_config(spec)
        text["rope_parameters"]["mrope_interleaved"] = True
        return {**text, "head_dim": spec.hidden // spec.heads}

    def vision_config(self, spec) -> dict:
        return dict(
            **_qwen_vision_dims(spec),
            out_hidden_size=spec.hidden,
            num_position_embeddings=self.position_embeddings,
            deepstack_visual_indexes=deepstack_blocks(spec.vision_layers),
        )

    def vision_shape(self, config) -> flops.VisionShape:
        v = config.vision_config
        mergers = 1 + len(v.deepstack_visual_indexes)
        return _qwen_vision_shape(v, window=None, full_blocks=(), mergers=mergers, mlp_linears=2)


class LLaVA(BenchFamily):
    model_type, label, token_pixels = "llava", "LLaVA-1.5", 14
    dynamic_resolution = False
    published_image = 336
    """LLaVA-1.5's CLIP ViT-L/14-336: 24 x 24 patches."""

    def grid(self, spec) -> tuple[int, int]:
        side = _square(spec.visual_tokens)
        if spec.grid is not None and spec.grid[0] != spec.grid[1]:
            raise ValueError(f"LLaVA sees square images only; got a {spec.grid[0]} x {spec.grid[1]} token grid.")
        if spec.shape is not None and side * self.token_pixels != self.published_image:
            fixed = (self.published_image // self.token_pixels) ** 2
            raise ValueError(
                f"--shape {spec.shape} sees {fixed} visual tokens per image ({self.published_image} px, fixed by its "
                f"vision tower); got --visual-tokens {spec.visual_tokens}. Set --visual-tokens {fixed}, and "
                "--images N for N x that many per prompt."
            )
        return side, side

    def processor(self, spec):
        from glimpserl.models.tiny import build_tiny_processor

        return build_tiny_processor(self.model_type, image_size=self.image_pixels(spec)[0])

    def config_kwargs(self, spec) -> dict:
        text = dict(
            num_attention_heads=spec.heads,
            num_key_value_heads=spec.kv_heads,
            intermediate_size=spec.intermediate,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        )
        vision = dict(
            hidden_size=spec.vision_hidden,
            num_attention_heads=spec.vision_heads,
            intermediate_size=spec.vision_intermediate or spec.vision_hidden * 4,
        )
        return dict(
            vision_layers=spec.vision_layers,
            image_size=self.image_pixels(spec)[0],
            text_config=text,
            vision_config=vision,
            tie_word_embeddings=spec.tied,
        )

    def vision_shape(self, config) -> flops.VisionShape:
        v, text_hidden = config.vision_config, config.text_config.hidden_size
        return flops.VisionShape(
            hidden=v.hidden_size,
            depth=v.num_hidden_layers,  # every block runs, though the features come from the second-to-last
            heads=v.num_attention_heads,
            intermediate=v.intermediate_size,
            patch_volume=v.num_channels * v.patch_size**2,
            merge=1,
            window=None,
            full_blocks=(),
            merger=((v.hidden_size, text_hidden), (text_hidden, text_hidden)),
            mlp_linears=2,
            extra_tokens=1,
        )

    def image_grids(self, config, inputs: dict) -> list[tuple[int, int, int]]:
        side = config.vision_config.image_size // config.vision_config.patch_size
        return [(1, side, side)] * inputs["pixel_values"].shape[0]


FAMILIES: dict[str, BenchFamily] = {f.model_type: f for f in (Qwen2_5_VL(), Qwen3_VL(), LLaVA())}


def family_of(name: str) -> BenchFamily:
    if name not in FAMILIES:
        raise ValueError(f"The benchmarks build {', '.join(FAMILIES)}; got family {name!r}.")
    return FAMILIES[name]


def shapes_from_model(model) -> tuple[flops.TextShape, flops.VisionShape, flops.VIPShape | None]:
    """Read the analytic shapes from a benchmarked model (with or without a glimpse attached)."""
    config = model.config
    family = family_of(config.model_type)
    t = config.text_config
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    text = flops.TextShape(
        t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, head_dim,
        t.intermediate_size, t.vocab_size,
    )  # fmt: skip
    glimpse = getattr(model.model, "glimpse", None)
    vip = None
    if glimpse is not None:
        c = glimpse.config
        vision_size = glimpse.vip.blocks[0].cond.in_features  # what the VIP reads of every visual token
        vip = flops.VIPShape(
            c.vip_hidden_size, c.vip_intermediate_size, c.vip_num_blocks, t.num_attention_heads, vision_size
        )
    return text, family.vision_shape(config), vip
