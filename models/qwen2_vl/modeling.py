"""How a Qwen2-VL / Qwen2.5-VL forward is fed to the pruned decoder: image features and VIP features from one
vision-encoder call, 3-axis M-RoPE positions exactly as the vanilla model computes them, and each image's merged
token grid."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers.vision_utils import get_vision_window_index

from ..inputs import GlimpseInputs, grid_coordinates, image_runs, pad_images, scatter_images

UNSUPPORTED = {
    "pixel_values_videos": "glimpse pruning supports images only; this input has videos (pixel_values_videos).",
    "mm_encoder_outputs": "glimpse pruning runs the vision encoder itself: pass pixel_values, not mm_encoder_outputs.",
}


class VisionTaps:
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


def merged_features(inner, hidden: torch.Tensor, grid_thw: torch.Tensor, windowed: bool) -> torch.Tensor:
    """Vision-block output [patches, size] -> one averaged feature per merged token [tokens, size], in raster order.

    Qwen2-VL's patch order already groups each 2x2 merge unit; Qwen2.5-VL (`windowed`) runs its blocks in window
    order, so the merged features are permuted back.
    """
    visual = inner.visual
    merged = hidden.view(-1, visual.spatial_merge_size**2, hidden.shape[-1]).mean(1)
    if not windowed:
        return merged
    window_index, _ = get_vision_window_index(
        grid_thw,
        spatial_merge_size=visual.spatial_merge_size,
        window_size=visual.window_size,
        patch_size=visual.patch_size,
        kwargs={},
    )
    return merged[torch.argsort(window_index.to(merged.device))]


def vision_features(inner, pixel_values, grid_thw, layers: list[int], windowed: bool):
    """Run the vision encoder once; returns (merged image embeddings [tokens, text_hidden], one
    [tokens, vision_size] feature per entry of `layers`, the encoder's whole output)."""
    with VisionTaps(inner.visual.blocks, layers) as taps:
        out = inner.get_image_features(pixel_values, grid_thw, return_dict=True)
    embeds = torch.cat(out.pooler_output, dim=0)
    feats = {i: merged_features(inner, h, grid_thw, windowed) for i, h in taps.outputs.items()}
    return embeds, [feats[i] for i in layers], out


def mrope_positions(inner, batch: dict, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """[3, batch, seq] positions: the caller's, else exactly the vanilla model's (including its handling of inputs
    without mm_token_type_ids)."""
    input_ids, attention_mask, position_ids = batch["input_ids"], batch["attention_mask"], batch["position_ids"]
    if position_ids is None:
        position_ids = inner.compute_3d_position_ids(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            image_grid_thw=batch["image_grid_thw"],
            video_grid_thw=None,
            attention_mask=attention_mask,
            cache=None,
            mm_token_type_ids=batch["mm_token_type_ids"],
        )
    if position_ids is None:  # the vanilla text model then counts positions 0, 1, 2, ...
        rows, seq = input_ids.shape
        position_ids = torch.arange(seq, device=input_ids.device).view(1, 1, -1).expand(3, rows, -1)
    elif position_ids.shape[0] == 4:  # generate prepends text positions used only for packed masks
        position_ids = position_ids[1:]
    return position_ids


def prepare_inputs(
    inner, glimpse, batch: dict, windowed: bool, residuals: Callable[[object], list[torch.Tensor]] | None = None
) -> GlimpseInputs:
    """The decoder inputs of one forward of a Qwen-VL family (`batch`: the inner forward's named arguments).
    `residuals`: what the vision encoder's output adds to the visual tokens after the first decoder layers (see
    `GlimpseInputs.visual_residuals`), for a family whose encoder gives any."""
    for name, message in UNSUPPORTED.items():
        if batch.get(name) is not None:
            raise ValueError(message)
    input_ids, grid_thw = batch["input_ids"], batch["image_grid_thw"]
    if input_ids is None:
        raise ValueError("glimpse pruning needs input_ids (to find the image tokens), not only inputs_embeds.")
    if grid_thw is None:
        raise ValueError("glimpse pruning needs image_grid_thw beside pixel_values (the processor returns both).")
    visual_mask = input_ids == inner.config.image_token_id
    merge = inner.visual.spatial_merge_size
    expected = (grid_thw.prod(-1) // merge**2).tolist()
    segments = image_runs(visual_mask, expected)
    layers = glimpse.config.vision_feature_layers
    embeds, feats, encoded = vision_features(inner, batch["pixel_values"], grid_thw, layers, windowed)
    inputs_embeds = batch["inputs_embeds"]
    if inputs_embeds is None:
        inputs_embeds = inner.get_input_embeddings()(input_ids)
    inputs_embeds = scatter_images(inputs_embeds, visual_mask, embeds)
    attention_mask = batch["attention_mask"]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = mrope_positions(inner, batch, inputs_embeds)
    grids = [(h // merge, w // merge) for _, h, w in grid_thw.tolist()]
    rows, cols, token_mask = grid_coordinates(grids, grid_thw.device)
    return GlimpseInputs(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        visual_mask=visual_mask,
        vision_features=[pad_images(f, expected) for f in feats],
        grid_rows=rows,
        grid_cols=cols,
        image_token_mask=token_mask,
        segments=segments,
        grids=grids,
        visual_residuals=None if residuals is None else residuals(encoded),
    )
