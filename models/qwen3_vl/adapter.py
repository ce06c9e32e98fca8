"""Qwen3-VL: a ViT with patch 16 and 2x2 merging (one visual token per 32 x 32 px, dynamic resolution), learned
position embeddings and no window attention, whose DeepStack mergers feed features of three ViT blocks into the
first three decoder layers; a Qwen3 decoder (per-head q/k norms) with interleaved 3-axis M-RoPE.

Its inputs, positions and processor settings follow Qwen2-VL's (the adapter derives from it); what differs is the
patch size, the DeepStack residuals and the processor classes."""

from __future__ import annotations

from transformers import Qwen3VLProcessor
from transformers.models.qwen3_vl import modeling_qwen3_vl

from ..adapter import register_adapter
from ..qwen2_vl.adapter import Qwen2VLAdapter
from . import modeling, tiny


class Qwen3VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen3_vl",)
    processor_types = (Qwen3VLProcessor, tiny.Qwen3VLImageOnlyProcessor)
    transformers_modeling = modeling_qwen3_vl
    windowed = False
    token_pixels = 32 * 32
    """A 16 px patch, merged 2x2."""

    def vision_modules(self, inner):
        return [inner.visual]  # patch embedding, position embeddings, blocks, merger and the DeepStack mergers

    def vision_size(self, inner):
        return inner.visual.config.hidden_size

    def prepare(self, inner, glimpse, batch, vision_attention=False):
        return modeling.prepare_inputs(inner, glimpse, batch)

    def build_tiny_model(self, seed=0, **kwargs):
        return tiny.build_tiny_model(seed=seed, **kwargs)

    def build_tiny_processor(self, **kwargs):
        return tiny.build_tiny_processor(**kwargs)

    def save_tiny(self, out_dir, seed=0, **kwargs):
        return tiny.save_tiny(out_dir, seed=seed, **kwargs)


register_adapter(Qwen3VLAdapter())
