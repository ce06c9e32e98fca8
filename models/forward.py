"""The pruned decoder pass, shared by every model family whose decoder layers are Llama-style
(input_layernorm -> self_attn{q,k,v,o}_proj -> post_attention_layernorm -> mlp).

Prefill with images, in named steps (`pruned_decoder_forward`):
1. `_prompt_layers`: layers 0..K run on the prompt (with the KV cache when generating); beside them the glimpse
   token runs as one extra query after the prompt: at each layer l < K it attends to the prompt's keys/values of
   layer l and to itself; nothing ever attends to it. Each layer hands over the rotated keys/values it computed
   itself (the generation cache, or a private one in a pass that fills none), so no custom mask or attention kernel
   is needed; only a gradient-checkpointed layer, which takes no cache, has them recomputed from its input. At layer
   K the glimpse query is read out against every visual key;
2. `_decide`: the VIP turns the read-out into keep logits and a keep decision (or a training-free pruner decides,
   or a reused decision is applied);
3. `_completion_layers` (a pass with a completion after the prompt): the completion runs layers 0..K as side tokens
   that see only the kept prompt tokens;
4. `_short_sequence` (prune mode): the kept columns (and their KV cache of layers 0..K) are gathered into a shorter,
   left-padded sequence with their ORIGINAL position ids; `_masked_sequence` (masked mode): same length, each visual
   key gets an additive log(keep_prob) in layers K+1.. (a hard 0/1 mask equals physical removal);
5. layers K+1.. run, then `_final_states` puts the output where the caller reads it;
6. `_teacher_states` (masked mode, when asked): the unpruned model's output from the same prompt pass, without
   gradient: the vision encoder and the prompt's layers 0..K are the same with and without pruning, so only the
   completion's layers 0..K (seeing every prompt token) and layers K+1.. on every column run again.

A family whose vision features are also added to the visual tokens after the first decoder layers (DeepStack, in
`GlimpseInputs.visual_residuals`) gets them at every layer they belong to: on the whole prompt up to layer K, then
on the kept tokens only, at their places in the shorter sequence. Side tokens are text and get none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.masking_utils import create_causal_mask

from .inputs import GlimpseInputs
from .pruning import GlimpseResult, decide_keep, gather_cache_layers, gather_columns, key_bias, pruned_layout
from .request import PruneRequest
from .side_path import _last_token_attention, glimpse_readout, prompt_keys_values, side_layer_step
from .vip import GlimpseModule


@dataclass
class GlimpseCacheState:
    """Stored on the generation cache as `cache.glimpse_state`: what decode steps need after a pruned prefill."""

    result: GlimpseResult
    attention_mask: torch.Tensor
    """[batch, kept_len] padding mask of the pruned prefix."""
    prompt_length: int
    """Unpruned length of the prefill (columns of the original input)."""
    next_position: torch.Tensor
    """[axes, batch] rotary position of the first generated token (last prompt position + 1, unpruned)."""


@dataclass
class _Pass:
    """The fixed parts of one pruned forward, shared by its steps."""

    text: nn.Module
    glimpse: GlimpseModule
    inputs: GlimpseInputs
    adapter: Any
    """The family adapter: rotary function, rotary tables."""
    request: PruneRequest
    cache: Any
    use_cache: bool
    prompt: int
    layer_kwargs: dict

    @property
    def k_layer(self) -> int:
        return self.request.cut_layer(self.glimpse)

    @property
    def seq(self) -> int:
        return self.inputs.attention_mask.shape[1]

    @property
    def has_completion(self) -> bool:
        return self.prompt < self.seq

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor):
        return self.adapter.rotary_tables(self.text, hidden, positions)

    def run_layers(self, layers, h: torch.Tensor, mask, rope, cache, rows: torch.Tensor | None) -> torch.Tensor:
        """Run decoder `layers` on h [batch, columns, hidden]; `rows` [batch, columns] is each column's row in the
        visual residuals (-1: none), None when the family has none."""
        residuals = self.inputs.visual_residuals or ()
        for idx in layers:
            layer = self.text.layers[idx]
            h = layer(
                h,
                attention_mask=mask,
                position_embeddings=rope,
                cache=cache,
                use_cache=self.use_cache,
                **self.layer_kwargs,
            )
            if rows is not None and idx < len(residuals):
                h = _add_residual(h, rows, residuals[idx])
        return h

    def residual_rows(self) -> torch.Tensor | None:
        """[batch, seq] each input column's row in the visual residuals (-1: none); None without residuals."""
        return self.inputs.residual_rows() if self.inputs.visual_residuals else None


def _add_residual(h: torch.Tensor, rows: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """h with residual[rows[b, c]] added at every column whose row is >= 0 (out of place, as autograd needs)."""
    rows = rows.to(h.device)  # a model split over devices: the rows follow the hidden states
    b, c = (rows >= 0).nonzero(as_tuple=True)
    return h.index_put((b, c), h[b, c] + residual[rows[b, c]].to(device=h.device, dtype=h.dtype))


@dataclass
class _PromptPass:
    """What layers 0..K leave behind on the prompt columns."""

    hidden: torch.Tensor
    """[batch, prompt, hidden] prompt states after layer K."""
    layer_kv: list[tuple[torch.Tensor, torch.Tensor]]
    """Each layer's rotated prompt (keys, values), kept when a completion follows."""
    readout: torch.Tensor | None
    """[batch, heads, prompt] the glimpse's read-out at layer K."""
    state: torch.Tensor | None
    """[batch, hidden] the hidden state entering layer K that the VIP reads with `state_readout` (None without)."""
    attn_last: torch.Tensor | None
    """[batch, prompt] the last prompt token's attention at layer K (FastV-style pruners)."""


@dataclass
class _Decision:
    keep: torch.Tensor
    """[batch, seq] bool hard keep decision."""
    bias: torch.Tensor
    """[batch, seq] additive log-mask on visual keys (0 / -inf for a hard decision, 0 on text)."""
    logits: torch.Tensor
    """[batch, seq] VIP logits (zeros where no VIP ran)."""


def _vip_logits(
    glimpse: GlimpseModule, readout: torch.Tensor, inputs: GlimpseInputs, state: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the VIP on every image; returns logits [batch, seq] (0 outside visual columns)."""
    n_images, n_tokens = inputs.image_token_mask.shape
    stacked = readout.new_zeros(n_images, n_tokens, readout.shape[1])
    owner = []  # the batch row of each image
    image = 0
    for b, runs in enumerate(inputs.segments):
        for start, end in runs:
            stacked[image, : end - start] = readout[b, :, start:end].transpose(0, 1)
            owner.append(b)
            image += 1
    per_image = None if state is None else state[torch.tensor(owner, dtype=torch.long, device=state.device)]
    scores = glimpse.vip(
        stacked, inputs.vision_features, inputs.grid_rows, inputs.grid_cols, inputs.image_token_mask, per_image
    )
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


def _checkpointed(layer) -> bool:
    """Whether the layer runs under gradient checkpointing now: it then takes no cache (a replay would fill it twice)."""
    return getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled()


def _prompt_layers(p: _Pass) -> _PromptPass:
    """Layers 0..K on the prompt columns, the glimpse beside them (when it runs), and its read-out at layer K.

    The glimpse (and, when a completion follows, the completion) reads the rotated prompt keys/values each layer
    computed itself: from the generation cache, or from a private one the layer fills in a pass without cache. With a
    training-free pruner the glimpse does not run; FastV-style pruners get the last prompt token's attention at
    layer K instead.
    """
    cfg, rotary, prompt = p.glimpse.config, p.adapter.rotary(), p.prompt
    pruner, run_glimpse, keep_kv = p.request.pruner, p.request.runs_glimpse, p.has_completion
    h = p.inputs.inputs_embeds[:, :prompt]
    attention_mask = p.inputs.attention_mask[:, :prompt]
    positions = p.inputs.position_ids[:, :, :prompt]
    mask = create_causal_mask(config=p.text.config, inputs_embeds=h, attention_mask=attention_mask, cache=p.cache)
    rope = p.rope(h, positions)
    g_rope = p.rope(h, positions[:, :, -1:] + 1)
    g_bias = torch.zeros(attention_mask.shape, device=h.device).masked_fill(attention_mask == 0, float("-inf"))
    g_mask = attention_mask.new_ones(h.shape[0], 1)
    g = p.glimpse.embedding(0).to(h.dtype).expand(h.shape[0], 1, -1) if run_glimpse else None
    store = None  # the private cache of a pass without one, created when first needed
    rows = p.residual_rows()
    rows = None if rows is None else rows[:, :prompt]
    out = _PromptPass(h, [], None, None, None)
    for idx in range(p.k_layer + 1):
        layer = p.text.layers[idx]
        h_in = h
        fastv = pruner is not None and idx == p.k_layer and pruner.needs_attn_last
        needs_kv = keep_kv or run_glimpse or fastv
        if p.cache is not None:
            filled = p.cache
        elif needs_kv and not _checkpointed(layer):
            store = store if store is not None else DynamicCache(config=p.text.config)
            filled = store
        else:
            filled = None
        h = p.run_layers([idx], h, mask, rope, filled, rows)
        if not needs_kv:
            continue
        if filled is not None:
            kv = (filled.layers[idx].keys, filled.layers[idx].values)
        else:
            kv = prompt_keys_values(layer, h_in, rope, rotary)
        if keep_kv:
            out.layer_kv.append(kv)
        if fastv:
            out.attn_last = _last_token_attention(layer, h_in, rope, attention_mask, rotary, kv[0])
        if not run_glimpse:
            continue
        if idx > 0:
            g = g + p.glimpse.embedding(idx).to(h.dtype)
        if idx < cfg.layer:
            g = side_layer_step(layer, g, g_rope, g_mask, kv, g_bias, rotary)
        else:
            out.readout = glimpse_readout(layer, g, h_in, rope, g_rope, attention_mask, rotary, cfg.readout, kv[0])
            # Left padding: the last prompt column is every row's last real prompt token.
            out.state = {"glimpse": g[:, 0], "last_prompt": h_in[:, -1]}.get(cfg.state_readout)
    out.hidden = h
    return out


def _decide(p: _Pass, prompt_pass: _PromptPass) -> _Decision:
    """The keep decision over all columns. A training-free pruner decides instead of the VIP, and a reused decision
    without a read-out skips it: the logits are then zeros."""
    inputs, request, prompt = p.inputs, p.request, p.prompt
    visual = inputs.visual_mask
    seq = visual.shape[1]
    if request.pruner is not None:
        pad = (0, seq - prompt)
        signal = None if prompt_pass.attn_last is None else torch.nn.functional.pad(prompt_pass.attn_last, pad)
        text = inputs.attention_mask.bool() & ~visual
        text[:, prompt:] = False
        keep = request.pruner.keep_mask(
            inputs.inputs_embeds, visual, inputs.segments, signal, text, inputs.vision_attention
        )
        return _Decision(keep, key_bias(keep.float(), visual), torch.zeros(visual.shape, device=visual.device))
    if prompt_pass.readout is None:
        logits = torch.zeros(visual.shape, device=visual.device)
    else:
        readout = torch.nn.functional.pad(prompt_pass.readout, (0, seq - prompt))
        logits = _vip_logits(p.glimpse, readout, inputs, prompt_pass.state)
    if request.keep is not None:
        # A reused decision covers at least the prompt; later columns (a completion) are text and always kept.
        keep = request.keep[:, :seq].to(visual.device).bool()
        keep = torch.nn.functional.pad(keep, (0, seq - keep.shape[1]), value=True)
        keep = torch.where(visual, keep, torch.ones_like(visual))
    elif request.mode == "mask" and request.mask_fn is not None:
        bias = torch.where(visual, request.mask_fn(logits, visual), torch.zeros_like(logits))
        return _Decision(bias > -math.log(2.0), bias, logits)
    else:
        noise = request.noise[:, :seq] if request.noise is not None else None
        keep = decide_keep(logits.detach(), visual, inputs.segments, p.glimpse.config, noise)
    return _Decision(keep, key_bias(keep.float(), visual), logits)


def _completion_layers(p: _Pass, prompt_pass: _PromptPass, bias: torch.Tensor) -> torch.Tensor:
    """The completion after the prompt through layers 0..K as side tokens: [batch, seq - prompt, hidden]. It sees
    exactly what generation showed it: the kept prompt tokens only (`bias` [batch, seq]: the decision's key bias)."""
    prompt = p.prompt
    completion = p.inputs.inputs_embeds[:, prompt:]
    if not p.has_completion:
        return completion
    prompt_mask = p.inputs.attention_mask[:, :prompt]
    prompt_bias = bias[:, :prompt].masked_fill(prompt_mask == 0, float("-inf"))
    rope = p.rope(completion, p.inputs.position_ids[:, :, prompt:])
    for idx in range(p.k_layer + 1):
        completion = side_layer_step(
            p.text.layers[idx],
            completion,
            rope,
            p.inputs.attention_mask[:, prompt:],
            prompt_pass.layer_kv[idx],
            prompt_bias,
            p.adapter.rotary(),
        )
    return completion


def _masked_sequence(p: _Pass, prompt_pass: _PromptPass, completion: torch.Tensor, decision: _Decision, result):
    """Masked mode: the full-length sequence with each visual key's log keep-probability added in layers K+1..
    Returns (hidden, attention mask for layers K+1.., positions, padding mask, residual rows)."""
    result.keep_prob = decision.bias.exp()
    h = torch.cat([prompt_pass.hidden, completion], dim=1)
    mask = _masked_attention_bias(p.inputs.attention_mask, decision.bias, h.dtype)
    return h, mask, p.inputs.position_ids, p.inputs.attention_mask, p.residual_rows()


def _short_sequence(p: _Pass, prompt_pass: _PromptPass, completion: torch.Tensor, decision: _Decision, result):
    """Prune mode: the kept prompt columns, right-aligned, then the completion; the cache of layers 0..K is gathered
    to the same layout. Returns (hidden, attention mask for layers K+1.., positions, padding mask, residual rows)."""
    prompt, positions = p.prompt, p.inputs.position_ids
    prompt_mask = p.inputs.attention_mask[:, :prompt]
    index, valid = pruned_layout(decision.keep[:, :prompt])
    h = torch.cat([gather_columns(prompt_pass.hidden, index, dim=1), completion], dim=1)
    tail = torch.arange(prompt, p.seq, device=index.device).expand(index.shape[0], -1)
    result.kept_index = torch.cat([index, tail], dim=1)
    kept_positions = positions.gather(2, index[None].expand(positions.shape[0], -1, -1))
    positions = torch.cat([kept_positions, positions[:, :, prompt:]], dim=2)
    attention_mask = torch.cat([prompt_mask.gather(1, index) * valid, p.inputs.attention_mask[:, prompt:]], dim=1)
    if p.cache is not None:
        gather_cache_layers(p.cache, range(p.k_layer + 1), index)
    mask = create_causal_mask(
        config=p.text.config, inputs_embeds=h, attention_mask=attention_mask, cache=p.cache, layer_idx=p.k_layer + 1
    )
    rows = p.residual_rows()
    if rows is not None:
        kept_rows = rows[:, :prompt].gather(1, index).masked_fill(~valid, -1)
        rows = torch.cat([kept_rows, rows[:, prompt:]], dim=1)
    return h, mask, positions, attention_mask, rows


def _final_states(p: _Pass, h: torch.Tensor) -> torch.Tensor:
    """The final norm; a pruned pass with a completion goes back to the input's columns, where a caller's labels
    [batch, seq] are (TRL's fused LM head shifts them against these states): the last kept prompt token predicts the
    completion's first token, as in generation. Every column before it is zeros (nothing is scored on it)."""
    if p.request.mode == "prune" and p.has_completion:
        tail = p.seq - p.prompt + 1
        return torch.nn.functional.pad(p.text.norm(h[:, -tail:]), (0, 0, p.seq - tail, 0))
    return p.text.norm(h)


def pruned_decoder_forward(
    text: nn.Module,
    glimpse: GlimpseModule,
    inputs: GlimpseInputs,
    adapter,
    request: PruneRequest,
    cache=None,
    use_cache: bool = False,
    **layer_kwargs,
) -> tuple[torch.Tensor, GlimpseResult, object, torch.Tensor | None]:
    """Run the decoder `text` with the glimpse (see `PruneRequest` for what can be asked); returns (last hidden
    states after the final norm, result, cache, the unpruned model's last hidden states [batch, seq, hidden] when
    `request.teacher` asks for them, else None).

    Hidden states are [batch, seq, hidden] at the input's columns in masked mode and in a pass with a completion
    (prune mode: the last prompt token and the completion are there, every column before them is zeros: nothing is
    scored on it), and [batch, kept_len, hidden] in the pruned layout (`result.kept_index`) for a prompt alone.
    """
    seq = inputs.attention_mask.shape[1]
    prompt = request.prompt_length or seq
    if prompt < seq:
        use_cache = False
    if request.mode == "mask" and use_cache:
        raise ValueError("glimpse_mode='mask' is a training mode and cannot fill a generation cache.")
    if not use_cache:
        cache = None
    elif cache is None:
        cache = DynamicCache(config=text.config)
    p = _Pass(text, glimpse, inputs, adapter, request, cache, use_cache, prompt, layer_kwargs)

    prompt_pass = _prompt_layers(p)
    decision = _decide(p, prompt_pass)
    if request.mode == "prune":
        decision.keep[:, :prompt] &= inputs.attention_mask[:, :prompt].bool()  # prompt padding goes too; not text
    completion = _completion_layers(p, prompt_pass, decision.bias)
    result = GlimpseResult(
        inputs.visual_mask, decision.keep, decision.logits, inputs.image_counts, _kept_counts(decision.keep, inputs)
    )
    result.image_grids = _per_sample(inputs.grids, inputs.segments)
    build = _masked_sequence if request.mode == "mask" else _short_sequence
    h, mask, positions, attention_mask, rows = build(p, prompt_pass, completion, decision, result)
    h = p.run_layers(range(p.k_layer + 1, len(text.layers)), h, mask, p.rope(h, positions), cache, rows)
    h = _final_states(p, h)
    if cache is not None:
        next_position = inputs.position_ids[:, :, prompt - 1] + 1
        cache.glimpse_state = GlimpseCacheState(result, attention_mask, seq, next_position)
    teacher = _teacher_states(p, prompt_pass) if request.teacher else None
    return h, result, cache, teacher


@torch.no_grad()
def _teacher_states(p: _Pass, prompt_pass: _PromptPass) -> torch.Tensor:
    """The unpruned model's final states [batch, seq, hidden] from the pass's prompt layers 0..K: the completion runs
    layers 0..K seeing every prompt token, then layers K+1.. run on all columns under the plain causal mask."""
    completion = _completion_layers(p, prompt_pass, torch.zeros_like(p.inputs.attention_mask, dtype=torch.float))
    h = torch.cat([prompt_pass.hidden, completion], dim=1)
    mask = create_causal_mask(
        config=p.text.config, inputs_embeds=h, attention_mask=p.inputs.attention_mask, cache=None
    )
    h = p.run_layers(
        range(p.k_layer + 1, len(p.text.layers)), h, mask, p.rope(h, p.inputs.position_ids), None, p.residual_rows()
    )
    return p.text.norm(h)


def _kept_counts(keep: torch.Tensor, inputs: GlimpseInputs) -> list[list[int]]:
    return [[int(keep[b, s:e].sum()) for s, e in runs] for b, runs in enumerate(inputs.segments)]


def _per_sample(items: list, segments: list[list[tuple[int, int]]]) -> list[list]:
    out, i = [], 0
    for runs in segments:
        out.append(items[i : i + len(runs)])
        i += len(runs)
    return out
