"""LLaVA-1.5: a CLIP ViT-L/14 tower at 336 px (576 patch tokens per image, CLS dropped by the projector), a 2-layer
MLP projector and a Llama / Vicuna decoder with 1-D RoPE. The method reads the glimpse with a log-softmax and feeds
the VIP CLIP hidden states 23, 17, 11, 5 (the outputs of blocks 22, 16, 10, 4)."""

from __future__ import annotations

from transformers import LlavaProcessor
from transformers.models.llama import modeling_llama

from ..adapter import VLMAdapter, register_adapter
from . import modeling, tiny


class LlavaAdapter(VLMAdapter):
    model_types = ("llava",)
    processor_types = (LlavaProcessor,)
    pruner_signals = frozenset({"attn_last", "instruction", "vision_attn"})
    default_readout = "log_softmax"

    def inner_model(self, model):
        return model.model

    def text_model(self, inner):
        return inner.language_model

    def vision_modules(self, inner):
        return [inner.vision_tower, inner.multi_modal_projector]

    def num_vision_layers(self, inner):
        return inner.config.vision_config.num_hidden_layers

    def vision_size(self, inner):
        return inner.config.vision_config.hidden_size

    def default_feature_layers(self, inner, count):
        """From the block the projector reads down, spaced by depth / count: 22, 16, 10, 4 of CLIP-L's 24."""
        top = modeling.feature_block(inner, inner.config.vision_feature_layer)
        step = max(1, self.num_vision_layers(inner) // count)
        return [max(0, top - i * step) for i in range(count)]

    def prepare(self, inner, glimpse, batch, vision_attention=False):
        return modeling.prepare_inputs(inner, glimpse, batch, vision_attention)

    def rotary(self):
        return modeling_llama.apply_rotary_pos_emb

    def decoder_positions(self, positions):
        return positions[0]  # one axis: Llama takes [batch, seq]

    def set_pixel_bounds(self, processor, min_pixels, max_pixels):
        raise ValueError(
            f"min_pixels / max_pixels do not apply to LLaVA: its processor resizes every image to "
            f"{_image_side(processor)} px squares, a fixed number of visual tokens. Leave them unset."
        )

    def shrink_kwargs(self, processor, fraction):
        raise ValueError(
            f"downsampling does not apply to LLaVA: every image becomes the same {_image_side(processor)} px square "
            "and the same number of visual tokens, whatever its size."
        )

    def build_tiny_model(self, seed=0, **kwargs):
        return tiny.build_tiny_model(seed=seed, **kwargs)

    def build_tiny_processor(self, **kwargs):
        return tiny.build_tiny_processor(**kwargs)

    def save_tiny(self, out_dir, seed=0, **kwargs):
        return tiny.save_tiny(out_dir, seed=seed, **kwargs)


def _image_side(processor) -> int:
    crop = getattr(processor.image_processor, "crop_size", None)
    return int(getattr(crop, "height", None) or processor.image_processor.size["height"])


register_adapter(LlavaAdapter())
