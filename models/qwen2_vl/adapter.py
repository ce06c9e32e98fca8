"""Qwen2-VL and Qwen2.5-VL: how to get visual features, grids and M-RoPE positions for the glimpse."""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl
from transformers.models.qwen2_vl import modeling_qwen2_vl
from transformers.vision_utils import get_vision_window_index

from ..adapter import VLMAdapter, register_adapter
from ..forward import GlimpseInputs
from ..pruning import image_segments


class _VisionTaps:
    """Forward hooks that record chosen vision-block outputs during one vision-encoder call."""

    def __init__(self, blocks: nn.ModuleList, layers: list[int]):
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles = [blocks[i].register_forward_hook(self._hook(i)) for i in sorted(set(layers))]

    def _hook(self, idx: int):
        def record(_module, _args, output):
            self.outputs[idx] = output[0] if isinstance(output, tuple) else output

        return record

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()


class Qwen2VLAdapter(VLMAdapter):
    """Qwen2-VL: a plain ViT whose patch order already groups each 2x2 merge unit."""

    model_types = ("qwen2_vl",)
    modeling = modeling_qwen2_vl

    def inner_model(self, model):
        return model.model

    def text_model(self, inner):
        return inner.language_model

    def num_vision_layers(self, inner):
        return len(inner.visual.blocks)

    def vision_size(self, inner):
        return inner.visual.patch_embed.embed_dim

    def vision_encoder(self, inner):
        return inner.visual

    def rotary(self):
        return self.modeling.apply_rotary_pos_emb

    def lora_target_modules(self):
        return r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"

    def install(self, model):
        from .modeling import glimpse_class

        model.model.__class__ = glimpse_class(type(model.model), inner=True)
        model.__class__ = glimpse_class(type(model), inner=False)

    def _unpermute(self, inner, hidden: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Vision-block output [patches, size] -> one averaged feature per merged token [tokens, size]."""
        unit = inner.visual.spatial_merge_size**2
        return hidden.view(-1, unit, hidden.shape[-1]).mean(1)

    def vision_features(self, inner, pixel_values, grid_thw, layers: list[int]):
        """Run the vision encoder once; returns (merged image embeddings [tokens, text_hidden],
        one [tokens, vision_size] feature per entry of `layers`)."""
        with _VisionTaps(inner.visual.blocks, layers) as taps:
            out = inner.get_image_features(pixel_values, grid_thw, return_dict=True)
        embeds = torch.cat(out.pooler_output, dim=0)
        feats = {i: self._unpermute(inner, h, grid_thw) for i, h in taps.outputs.items()}
        return embeds, [feats[i] for i in layers]

    def prepare(
        self,
        inner,
        glimpse,
        input_ids,
        attention_mask,
        position_ids,
        inputs_embeds,
        pixel_values,
        image_grid_thw,
        mm_token_type_ids,
    ) -> GlimpseInputs:
        if input_ids is None:
            raise ValueError("glimpse pruning needs input_ids (to find the image tokens), not only inputs_embeds.")
        if image_grid_thw is None:
            raise ValueError("glimpse pruning needs image_grid_thw beside pixel_values (the processor returns both).")
        config = inner.config
        visual_mask = input_ids == config.image_token_id
        segments = image_segments(visual_mask)
        merge = inner.visual.spatial_merge_size
        expected = (image_grid_thw.prod(-1) // merge**2).tolist()
        found = [e - s for runs in segments for s, e in runs]
        if found != expected:
            raise ValueError(
                f"The prompt's image tokens do not match the images: runs of {found} image tokens for images of "
                f"{expected} tokens. A prompt truncated through its image tokens causes this: raise the maximum "
                "length or lower max_pixels."
            )
        embeds, feats = self.vision_features(inner, pixel_values, image_grid_thw, glimpse.config.vision_feature_layers)
        if inputs_embeds is None:
            inputs_embeds = inner.get_input_embeddings()(input_ids)
        inputs_embeds = inputs_embeds.masked_scatter(
            visual_mask[..., None].to(inputs_embeds.device), embeds.to(inputs_embeds.dtype)
        )
        if position_ids is None:
            # Exactly the vanilla model's positions, including its handling of inputs without mm_token_type_ids.
            position_ids = inner.compute_3d_position_ids(
                input_ids=input_ids,
                inputs_embeds=inputs_embeds,
                image_grid_thw=image_grid_thw,
                video_grid_thw=None,
                attention_mask=attention_mask,
                cache=None,
                mm_token_type_ids=mm_token_type_ids,
            )
        if position_ids is None:  # the vanilla text model then counts positions 0, 1, 2, ...
            batch, seq = input_ids.shape
            position_ids = torch.arange(seq, device=input_ids.device).view(1, 1, -1).expand(3, batch, -1)
        elif position_ids.shape[0] == 4:  # generate prepends text positions used only for packed masks
            position_ids = position_ids[1:]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rows, cols, token_mask = _grid_coords(image_grid_thw, merge, max(expected))
        return GlimpseInputs(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            visual_mask=visual_mask,
            vision_features=[_pad_images(f, expected) for f in feats],
            grid_rows=rows,
            grid_cols=cols,
            image_token_mask=token_mask,
            segments=segments,
            grids=[(h // merge, w // merge) for _, h, w in image_grid_thw.tolist()],
        )


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: vision blocks run in window order, so block outputs are permuted back to raster order."""

    model_types = ("qwen2_5_vl",)
    modeling = modeling_qwen2_5_vl

    def _unpermute(self, inner, hidden, grid_thw):
        visual = inner.visual
        window_index, _ = get_vision_window_index(
            grid_thw,
            spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
            kwargs={},
        )
        merged = super()._unpermute(inner, hidden, grid_thw)
        return merged[torch.argsort(window_index.to(merged.device))]


def _grid_coords(grid_thw: torch.Tensor, merge: int, longest: int):
    """Row/column of each merged token per image, padded: rows, cols [images, longest] and a validity mask."""
    n_images = grid_thw.shape[0]
    rows = torch.zeros(n_images, longest, dtype=torch.long, device=grid_thw.device)
    cols = torch.zeros_like(rows)
    valid = torch.zeros(n_images, longest, dtype=torch.bool, device=grid_thw.device)
    for i, (t, h, w) in enumerate(grid_thw.tolist()):
        h, w = h // merge, w // merge
        n = t * h * w
        idx = torch.arange(n, device=grid_thw.device)
        rows[i, :n] = (idx // w) % h
        cols[i, :n] = idx % w
        valid[i, :n] = True
    return rows, cols, valid


def _pad_images(features: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """[sum(counts), size] -> [images, max(counts), size] zero-padded."""
    out = features.new_zeros(len(counts), max(counts), features.shape[-1])
    for i, chunk in enumerate(torch.split(features, counts)):
        out[i, : chunk.shape[0]] = chunk
    return out


register_adapter(Qwen2VLAdapter())
register_adapter(Qwen2_5_VLAdapter())
