"""The pruned decoder pass, shared by every model family whose decoder layers are Llama-style
(input_layernorm -> self_attn{q,k,v,o}_proj -> post_attention_layernorm -> mlp).

Prefill with images:
1. layers 0..K run on the full sequence (with the KV cache when generating);
2. beside them, the glimpse token runs as one extra query after the prompt: at each layer l < K it attends to the
   prompt's keys/values of layer l and to itself; nothing ever attends to it. Each layer hands over the rotated
   keys/values it computed itself (the generation cache, or a private one in a pass that fills none), so no custom
   mask or attention kernel is needed; only a gradient-checkpointed layer, which takes no cache, has them
   recomputed from its input;
3. at layer K its query is read out against every visual key: the VIP turns the read-out into keep logits;
4. prune mode: the kept columns (and their KV cache of layers 0..K) are gathered into a shorter, left-padded
   sequence with their ORIGINAL position ids, and layers K+1.. run on it. Masked mode: same length, each visual
   key gets an additive log(keep_prob) in layers K+1.. (a hard 0/1 mask equals physical removal).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from .pruning import GlimpseResult, decide_keep, gather_cache_layers, gather_columns, key_bias, pruned_layout
from .side_path import _last_token_attention, glimpse_readout, prompt_keys_values, side_layer_step
from .vip import GlimpseModule

GlimpseMode = Literal["prune", "mask", "off"]
MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(vip_logits [batch, seq], visual_mask [batch, seq]) -> additive key bias [batch, seq] for masked mode: the log
keep-probability of each visual token (0 = keep, very negative = drop). A relaxation returns it directly so that,
e.g., a straight-through estimator can be exact in value and smooth in gradient."""


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
    grids: list[tuple[int, int]]
    """(rows, cols) of each image's visual-token grid, images in order."""


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


def _run_layers(text_model, layer_range, h, mask, rope, cache, use_cache, **kwargs) -> torch.Tensor:
    for idx in layer_range:
        h = text_model.layers[idx](
            h, attention_mask=mask, position_embeddings=rope, cache=cache, use_cache=use_cache, **kwargs
        )
    return h


def cut_layer(glimpse: GlimpseModule, pruner=None) -> int:
    """The layer after which visual tokens are dropped: the glimpse's K, or a training-free pruner's own layer
    (-1 = before the first layer)."""
    own = getattr(pruner, "layer", None)
    return glimpse.config.layer if own is None else own


def _checkpointed(layer) -> bool:
    """Whether the layer runs under gradient checkpointing now: it then takes no cache (a replay would fill it twice)."""
    return getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled()


def _prompt_with_glimpse(
    text_model, glimpse, inputs, prompt, rotary, cache, use_cache, keep_kv, run_glimpse, pruner, **kwargs
):
    """Layers 0..K on the prompt columns, the glimpse beside them (if run_glimpse), and its read-out at layer K.

    The glimpse (and, with keep_kv, a completion later) reads the rotated prompt keys/values each layer computed
    itself: from the generation cache, or from a private one the layer fills in a pass without cache. With a
    training-free `pruner` the glimpse does not run; FastV-style pruners get the last prompt token's attention at
    layer K instead. Returns (prompt states after layer K, each layer's prompt (keys, values) if keep_kv, read-out
    [batch, heads, prompt] or None, last-token attention [batch, prompt] or None).
    """
    cfg = glimpse.config
    k_layer = cut_layer(glimpse, pruner)
    h = inputs.inputs_embeds[:, :prompt]
    attention_mask = inputs.attention_mask[:, :prompt]
    positions = inputs.position_ids[:, :, :prompt]
    mask = create_causal_mask(config=text_model.config, inputs_embeds=h, attention_mask=attention_mask, cache=cache)
    rope = text_model.rotary_emb(h, positions)
    g_rope = text_model.rotary_emb(h, positions[:, :, -1:] + 1)
    g_bias = torch.zeros(attention_mask.shape, device=h.device).masked_fill(attention_mask == 0, float("-inf"))
    g_mask = attention_mask.new_ones(h.shape[0], 1)
    g = glimpse.embedding(0).to(h.dtype).expand(h.shape[0], 1, -1) if run_glimpse else None
    store = None  # the private cache of a pass without one, created when first needed
    layer_kv, readout, attn_last = [], None, None
    for idx in range(k_layer + 1):
        layer = text_model.layers[idx]
        h_in = h
        fastv = pruner is not None and idx == k_layer and pruner.needs_attn_last
        needs_kv = keep_kv or run_glimpse or fastv
        if cache is not None:
            filled = cache
        elif needs_kv and not _checkpointed(layer):
            store = store if store is not None else DynamicCache(config=text_model.config)
            filled = store
        else:
            filled = None
        h = _run_layers(text_model, [idx], h, mask, rope, filled, use_cache, **kwargs)
        if not needs_kv:
            continue
        if filled is not None:
            kv = (filled.layers[idx].keys, filled.layers[idx].values)
        else:
            kv = prompt_keys_values(layer, h_in, rope, rotary)
        if keep_kv:
            layer_kv.append(kv)
        if fastv:
            attn_last = _last_token_attention(layer, h_in, rope, attention_mask, rotary, kv[0])
        if not run_glimpse:
            continue
        if idx > 0:
            g = g + glimpse.embedding(idx).to(h.dtype)
        if idx < cfg.layer:
            g = side_layer_step(layer, g, g_rope, g_mask, kv, g_bias, rotary)
        else:
            readout = glimpse_readout(layer, g, h_in, rope, g_rope, attention_mask, rotary, cfg.readout, kv[0])
    return h, layer_kv, readout, attn_last


def _decide(glimpse, inputs, readout, mode, keep, mask_fn, prompt, noise=None, pruner=None, attn_last=None):
    """Keep decision over all columns: (hard keep [batch, seq] bool, key bias [batch, seq], VIP logits).

    The key bias is the additive log-mask on visual keys (0 / -inf for a hard decision, 0 on text). A
    training-free pruner decides instead of the VIP, and a reused decision without a read-out skips it: the
    logits are then zeros.
    """
    visual = inputs.visual_mask
    seq = visual.shape[1]
    if pruner is not None:
        logits = torch.zeros(visual.shape, device=visual.device)
        pad = (0, seq - prompt)
        signal = None if attn_last is None else torch.nn.functional.pad(attn_last, pad)
        text = inputs.attention_mask.bool() & ~visual
        text[:, prompt:] = False
        keep = pruner.keep_mask(inputs.inputs_embeds, visual, inputs.segments, signal, text)
        return keep, key_bias(keep.float(), visual), logits
    if readout is None:
        logits = torch.zeros(visual.shape, device=visual.device)
    else:
        logits = _vip_logits(glimpse, torch.nn.functional.pad(readout, (0, seq - prompt)), inputs)
    if keep is not None:
        # A reused decision covers at least the prompt; later columns (a completion) are text and always kept.
        keep = torch.nn.functional.pad(
            keep[:, :seq].to(visual.device).bool(), (0, seq - min(keep.shape[1], seq)), value=True
        )
        keep = torch.where(visual, keep, torch.ones_like(visual))
    elif mode == "mask" and mask_fn is not None:
        bias = torch.where(visual, mask_fn(logits, visual), torch.zeros_like(logits))
        return bias > -math.log(2.0), bias, logits
    else:
        noise = noise[:, :seq] if noise is not None else None
        keep = decide_keep(logits.detach(), visual, inputs.segments, glimpse.config, noise)
    return keep, key_bias(keep.float(), visual), logits


def pruned_decoder_forward(
    text_model: nn.Module,
    glimpse: GlimpseModule,
    inputs: GlimpseInputs,
    rotary: Callable,
    cache=None,
    use_cache: bool = False,
    mode: GlimpseMode = "prune",
    keep: torch.Tensor | None = None,
    mask_fn: MaskFn | None = None,
    prompt_length: int | None = None,
    noise: torch.Tensor | None = None,
    pruner=None,
    vip_logits: bool = True,
    **kwargs,
) -> tuple[torch.Tensor, GlimpseResult, object]:
    """Run the decoder with the glimpse; returns (last hidden states after the final norm, result, cache).

    keep: optional [batch, >= prompt] bool, a keep decision to reuse instead of the VIP's (visual columns only).
    vip_logits: with `keep` given, False skips the glimpse token and the VIP altogether (the result's logits are
    then zeros): a pass that reuses a decision and learns nothing from the VIP needs neither.
    noise: optional [batch, >= prompt] uniform noise: sample the keep mask from the VIP (Bernoulli) instead of
    thresholding it.
    mask_fn: masked mode only, turns VIP logits into the key bias (default: the hard decision, 0 / -inf).
    prompt_length: columns of the prompt when a completion follows (a training / log-prob pass). The completion
    then sees in every layer exactly what generation would have shown it: the kept prompt tokens only (layers
    0..K as side tokens, layers K+1.. in the short sequence). Such a pass fills no cache.
    Hidden states are [batch, seq, hidden] at the input's columns in masked mode and in a pass with a completion
    (prune mode: the last prompt token and the completion are there, every column before them is zeros: nothing
    is scored on it), and [batch, kept_len, hidden] in the pruned layout (`result.kept_index`) for a prompt alone.
    """
    k_layer = cut_layer(glimpse, pruner)
    attention_mask, position_ids, visual = inputs.attention_mask, inputs.position_ids, inputs.visual_mask
    seq = attention_mask.shape[1]
    prompt = prompt_length or seq
    if prompt < seq:
        use_cache = False
    if mode == "mask" and use_cache:
        raise ValueError("glimpse_mode='mask' is a training mode and cannot fill a generation cache.")
    if not use_cache:
        cache = None
    elif cache is None:
        cache = DynamicCache(config=text_model.config)

    run_glimpse = pruner is None and (keep is None or vip_logits)
    h, prompt_kv, readout, attn_last = _prompt_with_glimpse(
        text_model, glimpse, inputs, prompt, rotary, cache, use_cache, prompt < seq, run_glimpse, pruner, **kwargs
    )
    keep, bias, logits = _decide(glimpse, inputs, readout, mode, keep, mask_fn, prompt, noise, pruner, attn_last)
    prompt_mask = attention_mask[:, :prompt]
    if mode == "prune":
        keep[:, :prompt] &= prompt_mask.bool()  # prompt padding goes too; it is not text

    completion = inputs.inputs_embeds[:, prompt:]
    completion_positions = position_ids[:, :, prompt:]
    if prompt < seq:
        prompt_bias = bias[:, :prompt].masked_fill(prompt_mask == 0, float("-inf"))
        completion_rope = text_model.rotary_emb(completion, completion_positions)
        for idx in range(k_layer + 1):
            completion = side_layer_step(
                text_model.layers[idx],
                completion,
                completion_rope,
                attention_mask[:, prompt:],
                prompt_kv[idx],
                prompt_bias,
                rotary,
            )

    result = GlimpseResult(visual, keep, logits, _counts(inputs), _kept_counts(keep, inputs.segments))
    result.image_grids = _per_sample(inputs.grids, inputs.segments)
    if mode == "mask":
        result.keep_prob = bias.exp()
        h = torch.cat([h, completion], dim=1)
        mask = _masked_attention_bias(attention_mask, bias, h.dtype)
    else:
        index, valid = pruned_layout(keep[:, :prompt])
        h = torch.cat([gather_columns(h, index, dim=1), completion], dim=1)
        tail = torch.arange(prompt, seq, device=index.device).expand(index.shape[0], -1)
        result.kept_index = torch.cat([index, tail], dim=1)
        kept_positions = position_ids.gather(2, index[None].expand(position_ids.shape[0], -1, -1))
        position_ids = torch.cat([kept_positions, completion_positions], dim=2)
        attention_mask = torch.cat([prompt_mask.gather(1, index) * valid, attention_mask[:, prompt:]], dim=1)
        if cache is not None:
            gather_cache_layers(cache, range(k_layer + 1), index)
        mask = create_causal_mask(
            config=text_model.config,
            inputs_embeds=h,
            attention_mask=attention_mask,
            cache=cache,
            layer_idx=k_layer + 1,
        )
    rope = text_model.rotary_emb(h, position_ids)
    h = _run_layers(text_model, range(k_layer + 1, len(text_model.layers)), h, mask, rope, cache, use_cache, **kwargs)
    if mode == "prune" and prompt < seq:
        # Back to the input's columns, where a caller's labels [batch, seq] are (TRL's fused LM head shifts them
        # against these states): the last kept prompt token predicts the completion's first token, as in generation.
        tail = seq - prompt + 1
        h = torch.nn.functional.pad(text_model.norm(h[:, -tail:]), (0, 0, seq - tail, 0))
    else:
        h = text_model.norm(h)
    if cache is not None:
        next_position = inputs.position_ids[0, :, prompt - 1] + 1
        cache.glimpse_state = GlimpseCacheState(result, attention_mask, seq, next_position)
    return h, result, cache


def _per_sample(items: list, segments: list[list[tuple[int, int]]]) -> list[list]:
    out, i = [], 0
    for runs in segments:
        out.append(items[i : i + len(runs)])
        i += len(runs)
    return out


def _counts(inputs: GlimpseInputs) -> list[list[int]]:
    return [[e - s for s, e in runs] for runs in inputs.segments]
