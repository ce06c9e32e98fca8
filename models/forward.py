"""The pruned decoder pass, shared by every model family whose decoder layers are Llama-style
(input_layernorm -> self_attn{q,k,v,o}_proj -> post_attention_layernorm -> mlp).

Prefill with images:
1. layers 0..K run on the full sequence (with the KV cache when generating);
2. beside them, the glimpse token runs as one extra query after the prompt: at each layer l < K it attends to the
   prompt's keys/values of layer l (recomputed from that layer's input, so no cache, custom mask or attention
   kernel is needed and gradient checkpointing is unaffected) and to itself; nothing ever attends to it;
3. at layer K its query is read out against every visual key: the VIP turns the read-out into keep logits;
4. prune mode: the kept columns (and their KV cache of layers 0..K) are gathered into a shorter, left-padded
   sequence with their ORIGINAL position ids, and layers K+1.. run on it. Masked mode: same length, each visual
   key gets an additive log(keep_prob) in layers K+1.. (a hard 0/1 mask equals physical removal).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from .pruning import GlimpseResult, decide_keep, gather_cache_layers, gather_columns, key_bias, pruned_layout
from .vip import GlimpseModule

GlimpseMode = Literal["prune", "mask", "off"]
KeepProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(vip_logits [batch, seq], visual_mask [batch, seq]) -> keep probability [batch, seq] for masked mode."""


@dataclass
class GlimpseInputs:
    """Everything the family adapter prepared for the decoder pass."""

    inputs_embeds: torch.Tensor
    """[batch, seq, hidden] token embeddings with the image features scattered in."""
    attention_mask: torch.Tensor
    """[batch, seq] 1 = real token, 0 = padding."""
    position_ids: torch.Tensor
    """[axes, batch, seq] rotary positions (3 axes for M-RoPE)."""
    visual_mask: torch.Tensor
    """[batch, seq] bool, visual tokens."""
    vision_features: list[torch.Tensor]
    """One [images, tokens, vision_size] per VIP block, padded over images."""
    grid_rows: torch.Tensor
    """[images, tokens] row of each visual token in its image's token grid."""
    grid_cols: torch.Tensor
    """[images, tokens] column, as grid_rows."""
    image_token_mask: torch.Tensor
    """[images, tokens] bool, False on padding."""
    segments: list[list[tuple[int, int]]]
    """Per sample, (start, end) columns of each image, in the same order as the images dimension."""


def _kv(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary: Callable):
    """Rotated keys and values [batch, kv_heads, tokens, head_dim] of a normed input [batch, tokens, hidden]."""
    b, t, _ = x.shape
    k = attn.k_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    k, _ = rotary(k, k, cos, sin)
    return k, v


def _query(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary: Callable):
    b, t, _ = x.shape
    q = attn.q_proj(x).view(b, t, -1, attn.head_dim).transpose(1, 2)
    q, _ = rotary(q, q, cos, sin)
    return q


def glimpse_layer_step(layer, g, prompt_h, prompt_rope, g_rope, prompt_mask, rotary):
    """Advance the glimpse state g [batch, 1, hidden] through one decoder layer.

    It attends to the prompt states prompt_h [batch, prompt, hidden] (padding masked by prompt_mask) and itself.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(g)
    q = _query(attn, x, *g_rope, rotary)
    k_g, v_g = _kv(attn, x, *g_rope, rotary)
    k_p, v_p = _kv(attn, layer.input_layernorm(prompt_h), *prompt_rope, rotary)
    groups = q.shape[1] // k_g.shape[1]
    k = torch.cat([k_p, k_g], dim=2).repeat_interleave(groups, dim=1)
    v = torch.cat([v_p, v_g], dim=2).repeat_interleave(groups, dim=1)
    allowed = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(prompt_mask.shape[0], 1).bool()], dim=1)
    scores = (q @ k.transpose(-1, -2)).float() * attn.scaling
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1).to(v.dtype) @ v).transpose(1, 2).reshape(g.shape[0], 1, -1)
    g = g + attn.o_proj(out)
    return g + layer.mlp(layer.post_attention_layernorm(g))


def glimpse_readout(layer, g, prompt_h, prompt_rope, g_rope, prompt_mask, rotary, readout: str) -> torch.Tensor:
    """Per-head logits q.k/sqrt(d) of the glimpse query against every prompt key at layer K: [batch, heads, prompt].

    With readout="log_softmax" they are normalised over the prompt keys and the glimpse's own key.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(g)
    q = _query(attn, x, *g_rope, rotary)
    k_p, _ = _kv(attn, layer.input_layernorm(prompt_h), *prompt_rope, rotary)
    groups = q.shape[1] // k_p.shape[1]
    scores = (q @ k_p.repeat_interleave(groups, dim=1).transpose(-1, -2)).float().squeeze(2) * attn.scaling
    if readout == "log_softmax":
        k_g, _ = _kv(attn, x, *g_rope, rotary)
        self_score = (q * k_g.repeat_interleave(groups, dim=1)).sum(-1).float() * attn.scaling
        masked = scores.masked_fill(~prompt_mask.bool()[:, None, :], float("-inf"))
        scores = scores - torch.logsumexp(torch.cat([masked, self_score], dim=-1), dim=-1, keepdim=True)
    return scores


def _slice_rope(rope: tuple[torch.Tensor, torch.Tensor], end: int) -> tuple[torch.Tensor, torch.Tensor]:
    return rope[0][:, :end], rope[1][:, :end]


def _vip_logits(glimpse: GlimpseModule, readout: torch.Tensor, inputs: GlimpseInputs) -> torch.Tensor:
    """Run the VIP on every image; returns logits [batch, seq] (0 outside visual columns)."""
    n_images, n_tokens = inputs.image_token_mask.shape
    stacked = readout.new_zeros(n_images, n_tokens, readout.shape[1])
    image = 0
    for b, runs in enumerate(inputs.segments):
        for start, end in runs:
            stacked[image, : end - start] = readout[b, :, start:end].transpose(0, 1)
            image += 1
    scores = glimpse.vip(stacked, inputs.vision_features, inputs.grid_rows, inputs.grid_cols, inputs.image_token_mask)
    logits = torch.zeros(inputs.visual_mask.shape, dtype=scores.dtype, device=scores.device)
    image = 0
    for b, runs in enumerate(inputs.segments):
        for start, end in runs:
            logits[b, start:end] = scores[image, : end - start]
            image += 1
    return logits


def _masked_attention_bias(attention_mask: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Causal + padding mask plus a per-key additive bias, as a float [batch, 1, seq, seq] mask."""
    seq = attention_mask.shape[1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device).tril()
    allowed = causal[None] & attention_mask.bool()[:, None, :]
    mask = torch.where(allowed, bias[:, None, :], torch.full_like(bias[:, None, :], float("-inf")))
    # A row with no visible key (a dropped token right after padding) would give NaN: let it see itself. Its output
    # is never read by a kept token, so this does not change any kept token's result.
    dead = torch.isinf(mask).all(-1)
    eye = torch.eye(seq, dtype=torch.bool, device=mask.device)[None] & dead[..., None]
    mask = mask.masked_fill(eye, 0.0)
    return mask[:, None].to(dtype)


def _kept_counts(keep: torch.Tensor, segments: list[list[tuple[int, int]]]) -> list[list[int]]:
    return [[int(keep[b, s:e].sum()) for s, e in runs] for b, runs in enumerate(segments)]


@dataclass
class GlimpseCacheState:
    """Stored on the generation cache as `cache.glimpse_state`: what decode steps need after a pruned prefill."""

    result: GlimpseResult
    attention_mask: torch.Tensor
    """[batch, kept_len] padding mask of the pruned prefix."""
    prompt_length: int
    """Unpruned length of the prefill (columns of the original input)."""
    next_position: torch.Tensor
    """[batch] rotary position of the first generated token (last prompt position + 1, unpruned)."""


def pruned_decoder_forward(
    text_model: nn.Module,
    glimpse: GlimpseModule,
    inputs: GlimpseInputs,
    rotary: Callable,
    past_key_values=None,
    use_cache: bool = False,
    mode: GlimpseMode = "prune",
    keep: torch.Tensor | None = None,
    keep_prob_fn: KeepProbFn | None = None,
    prompt_length: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, GlimpseResult, object]:
    """Run the decoder with the glimpse; returns (last hidden states after the final norm, result, cache).

    keep: optional [batch, >= prompt] bool, a keep decision to reuse instead of the VIP's (visual columns only).
    keep_prob_fn: masked mode only, turns VIP logits into keep probabilities (default: the hard decision).
    prompt_length: columns of the prompt; later columns (a completion) are not seen by the glimpse.
    Hidden states are [batch, kept_len, hidden] in prune mode and [batch, seq, hidden] in masked mode.
    """
    cfg = glimpse.config
    h, attention_mask, position_ids = inputs.inputs_embeds, inputs.attention_mask, inputs.position_ids
    batch, seq, _ = h.shape
    k_layer = cfg.layer
    prompt = prompt_length or seq
    if mode == "mask" and use_cache:
        raise ValueError("glimpse_mode='mask' is a training mode and cannot fill a generation cache.")
    if use_cache and past_key_values is None:
        past_key_values = DynamicCache(config=text_model.config)

    mask = create_causal_mask(
        config=text_model.config,
        inputs_embeds=h,
        attention_mask=attention_mask,
        past_key_values=past_key_values,
        position_ids=None,
    )
    rope = text_model.rotary_emb(h, position_ids)
    next_position = position_ids[:, :, prompt - 1 : prompt] + 1
    g_rope = text_model.rotary_emb(h, next_position)
    prompt_rope = _slice_rope(rope, prompt)
    prompt_mask = attention_mask[:, :prompt]
    g = glimpse.embedding.input_embedding().to(h.dtype).expand(batch, 1, -1)
    layers = text_model.layers
    for idx in range(k_layer + 1):
        if idx > 0:
            g = g + glimpse.embedding.layer_embedding(idx).to(h.dtype)
        if idx < k_layer:
            g = glimpse_layer_step(layers[idx], g, h[:, :prompt], prompt_rope, g_rope, prompt_mask, rotary)
        else:
            readout = glimpse_readout(
                layers[idx], g, h[:, :prompt], prompt_rope, g_rope, prompt_mask, rotary, cfg.readout
            )
        h = layers[idx](
            h,
            attention_mask=mask,
            position_embeddings=rope,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )

    readout = torch.nn.functional.pad(readout, (0, seq - prompt))
    logits = _vip_logits(glimpse, readout, inputs)
    visual = inputs.visual_mask
    if keep is not None:
        keep = torch.where(visual, keep[:, :seq].to(visual.device).bool(), torch.ones_like(visual))
    elif mode != "mask" or keep_prob_fn is None:
        keep = decide_keep(logits.detach(), visual, inputs.segments, cfg)

    if mode == "mask":
        keep_prob = keep_prob_fn(logits, visual) if keep_prob_fn is not None and keep is None else keep.float()
        keep_prob = torch.where(visual, keep_prob, torch.ones_like(keep_prob))
        hard = keep if keep is not None else keep_prob > 0.5
        result = GlimpseResult(visual, hard, logits, _counts(inputs), _kept_counts(hard, inputs.segments))
        result.keep_prob = keep_prob
        mask = _masked_attention_bias(attention_mask, key_bias(keep_prob, visual), h.dtype)
    else:
        # Prompt padding goes too (it is not text); columns after the prompt (a right-padded completion) stay so
        # that every row's tail remains aligned.
        prompt_pad = torch.zeros_like(keep)
        prompt_pad[:, :prompt] = attention_mask[:, :prompt] == 0
        keep = keep & ~prompt_pad
        index, valid = pruned_layout(keep)
        result = GlimpseResult(visual, keep, logits, _counts(inputs), _kept_counts(keep, inputs.segments), index)
        h = gather_columns(h, index, dim=1)
        position_ids = position_ids.gather(2, index[None].expand(position_ids.shape[0], -1, -1))
        attention_mask = attention_mask.gather(1, index) * valid
        if past_key_values is not None:
            gather_cache_layers(past_key_values, range(k_layer + 1), index)
        mask = create_causal_mask(
            config=text_model.config,
            inputs_embeds=h,
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            position_ids=None,
            layer_idx=k_layer + 1,
        )
        rope = text_model.rotary_emb(h, position_ids)

    for idx in range(k_layer + 1, len(layers)):
        h = layers[idx](
            h,
            attention_mask=mask,
            position_embeddings=rope,
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
    h = text_model.norm(h)
    if past_key_values is not None and mode == "prune":
        past_key_values.glimpse_state = GlimpseCacheState(result, attention_mask, seq, next_position[0, :, 0].clone())
    return h, result, past_key_values


def _counts(inputs: GlimpseInputs) -> list[list[int]]:
    return [[e - s for s, e in runs] for runs in inputs.segments]
