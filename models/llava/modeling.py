"""How a LLaVA-1.5 forward is fed to the pruned decoder: the CLIP tower runs once for the projected image tokens, the
VIP's conditioning features (CLIP hidden states, CLS dropped) and, when a pruner asks, the CLS attention VisionZip
ranks tokens by; positions are the Llama decoder's 1-D ones, kept as one axis."""

from __future__ import annotations

import math

import torch

from ..inputs import GlimpseInputs, grid_coordinates, image_runs, scatter_images

UNSUPPORTED = {
    "image_sizes": "glimpse pruning supports LLaVA-1.5's one fixed-size image per placeholder, not image_sizes "
    "(LLaVA-NeXT's tiled images).",
    "mm_encoder_outputs": "glimpse pruning runs the vision encoder itself: pass pixel_values, not mm_encoder_outputs.",
}


def feature_block(inner, vision_feature_layer) -> int:
    """The CLIP block whose output the projector reads (vision_feature_layer indexes hidden states, where 0 is the
    embedding output): -2 on LLaVA-1.5 = block 22 of 24. A list of layers counts by its last one."""
    layer = vision_feature_layer if isinstance(vision_feature_layer, int) else vision_feature_layer[-1]
    return layer % (inner.config.vision_config.num_hidden_layers + 1) - 1


def cls_attention(inner, hidden_states: tuple[torch.Tensor, ...], block: int) -> torch.Tensor:
    """Attention of the CLS token over the patch tokens inside CLIP block `block`, mean over heads: [images, patches].

    Recomputed from the block's input (CLIP's sdpa kernel returns no weights); only the CLS query is projected.
    """
    layer = inner.vision_tower.encoder.layers[block]
    attn = layer.self_attn
    x = layer.layer_norm1(hidden_states[block])
    images, tokens, _ = x.shape
    q = attn.q_proj(x[:, :1]).view(images, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(images, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
    weights = ((q @ k.transpose(-1, -2)).float() * attn.scale).softmax(-1)
    return weights.mean(1)[:, 0, 1:]


def _per_column(values: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
    """[images, tokens] per-image values -> [batch, seq] at the visual columns (0 elsewhere)."""
    out = torch.zeros(visual_mask.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(visual_mask.to(values.device), values.flatten())


def prepare_inputs(inner, glimpse, batch: dict, vision_attention: bool = False) -> GlimpseInputs:
    """The decoder inputs of one LLaVA forward (`batch`: the inner forward's named arguments)."""
    for name, message in UNSUPPORTED.items():
        if batch.get(name) is not None:
            raise ValueError(message)
    input_ids = batch["input_ids"]
    if input_ids is None:
        raise ValueError("glimpse pruning needs input_ids (to find the image tokens), not only inputs_embeds.")
    config = inner.config
    layer = batch["vision_feature_layer"] if batch["vision_feature_layer"] is not None else config.vision_feature_layer
    strategy = batch["vision_feature_select_strategy"] or config.vision_feature_select_strategy
    if strategy != "default":
        raise ValueError(
            f"glimpse pruning needs the patch tokens alone on their grid (vision_feature_select_strategy 'default', "
            f"CLS dropped), got {strategy!r}."
        )
    out = inner.get_image_features(
        batch["pixel_values"],
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        output_hidden_states=True,
        return_dict=True,
    )
    hidden = out.hidden_states  # embeddings, then each block's output: [images, 1 + patches, vision_size]
    images, patches = hidden[0].shape[0], hidden[0].shape[1] - 1
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"LLaVA's vision tower gave {patches} patch tokens per image, not a square grid.")
    visual_mask = input_ids == config.image_token_id
    segments = image_runs(visual_mask, [patches] * images)
    inputs_embeds = batch["inputs_embeds"]
    if inputs_embeds is None:
        inputs_embeds = inner.get_input_embeddings()(input_ids)
    inputs_embeds = scatter_images(inputs_embeds, visual_mask, torch.cat(out.pooler_output, dim=0))
    attention_mask = batch["attention_mask"]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids = batch["position_ids"]
    if position_ids is None:  # as the vanilla Llama decoder counts them: 0, 1, 2, ... for every row
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    grids = [(side, side)] * images
    rows, cols, token_mask = grid_coordinates(grids, input_ids.device)
    attention = None
    if vision_attention:
        attention = _per_column(cls_attention(inner, hidden, feature_block(inner, layer)), visual_mask)
    return GlimpseInputs(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids[None],
        visual_mask=visual_mask,
        vision_features=[hidden[i + 1][:, 1:] for i in glimpse.config.vision_feature_layers],
        grid_rows=rows,
        grid_cols=cols,
        image_token_mask=token_mask,
        segments=segments,
        grids=grids,
        vision_attention=attention,
    )
