"""Qwen2-VL and Qwen2.5-VL: a ViT with 2x2 patch merging (one visual token per 28x28 px, dynamic resolution) and a
Qwen2 decoder with 3-axis M-RoPE."""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl
from transformers.models.qwen2_vl import modeling_qwen2_vl

from ..adapter import VLMAdapter, register_adapter
from . import modeling, tiny

MIN_SHRUNK_TOKENS = 4
"""Downsampling keeps at least 4 visual tokens per image."""


class Qwen2VLAdapter(VLMAdapter):
    """Qwen2-VL: a plain ViT whose patch order already groups each 2x2 merge unit."""

    model_types = ("qwen2_vl",)
    processor_types = (Qwen2VLProcessor, Qwen2_5_VLProcessor, tiny.Qwen2VLImageOnlyProcessor)
    dynamic_resolution = True
    default_readout = "logits"
    transformers_modeling = modeling_qwen2_vl
    windowed = False
    token_pixels = 28 * 28
    """Pixels per visual token: a 14 px patch, merged 2x2."""

    def inner_model(self, model):
        return model.model

    def text_model(self, inner):
        return inner.language_model

    def vision_modules(self, inner):
        return [inner.visual]  # the merger (projector) is part of it

    def num_vision_layers(self, inner):
        return len(inner.visual.blocks)

    def vision_size(self, inner):
        return inner.visual.patch_embed.embed_dim

    def prepare(self, inner, glimpse, batch, vision_attention=False):
        return modeling.prepare_inputs(inner, glimpse, batch, self.windowed)

    def rotary(self):
        return self.transformers_modeling.apply_rotary_pos_emb

    def decoder_positions(self, positions):
        return positions  # M-RoPE takes [3, batch, seq] as it is

    def set_pixel_bounds(self, processor, min_pixels, max_pixels):
        image_processor = processor.image_processor
        for key, edge, value in (
            ("min_pixels", "shortest_edge", min_pixels),
            ("max_pixels", "longest_edge", max_pixels),
        ):
            if value is None:
                continue
            image_processor.size[edge] = value
            if getattr(image_processor, key, None) is not None:  # a processor saved with the older attribute too
                setattr(image_processor, key, value)

    def shrink_kwargs(self, processor, fraction):
        size = processor.image_processor.size
        longest, shortest = getattr(size, "longest_edge", None), getattr(size, "shortest_edge", None)
        if not longest:
            return {}
        # Both pixel bounds shrink: a processor pinned to one size (min_pixels == max_pixels) would otherwise scale
        # every image back up to it.
        bound = max(int(longest * fraction), MIN_SHRUNK_TOKENS * self.token_pixels)
        return {"size": {"shortest_edge": min(shortest or bound, bound), "longest_edge": bound}}

    def build_tiny_model(self, seed=0, **kwargs):
        return tiny.build_tiny_model(self.model_types[0], seed=seed, **kwargs)

    def build_tiny_processor(self, **kwargs):
        return tiny.build_tiny_processor(self.model_types[0], **kwargs)

    def save_tiny(self, out_dir, seed=0, **kwargs):
        return tiny.save_tiny(out_dir, self.model_types[0], seed=seed, **kwargs)


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: vision blocks run in window order, so block outputs are permuted back to raster order."""

    model_types = ("qwen2_5_vl",)
    transformers_modeling = modeling_qwen2_5_vl
    windowed = True


register_adapter(Qwen2VLAdapter())
register_adapter(Qwen2_5_VLAdapter())
