"""The side path of a decoder layer: extra queries (the glimpse token, or a completion in a log-prob pass) that
attend to the prompt's keys/values of that layer without the prompt ever attending to them.

Shapes: hidden states [batch, tokens, hidden]; rotated keys/values [batch, kv_heads, tokens, head_dim]; `rotary` is
the family's own (q, k, cos, sin) -> (q, k) function, so the side path rotates exactly like the model. A layer whose
attention normalises each head's queries and keys before rotating them (`q_norm` / `k_norm`, as in Qwen3) gets the
same here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _heads(attn: nn.Module, proj: str, x: torch.Tensor) -> torch.Tensor:
    """`attn.<proj>_proj(x)` split into heads [batch, heads, tokens, head_dim], through the layer's per-head
    `<proj>_norm` where it has one."""
    b, t, _ = x.shape
    out = getattr(attn, f"{proj}_proj")(x).view(b, t, -1, attn.head_dim)
    norm = getattr(attn, f"{proj}_norm", None)
    return (out if norm is None else norm(out)).transpose(1, 2)


def _keys(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary: Callable):
    """Rotated keys [batch, kv_heads, tokens, head_dim] of a normed input [batch, tokens, hidden]."""
    k = _heads(attn, "k", x)
    return rotary(k, k, cos, sin)[0]


def _values(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _heads(attn, "v", x)


def _query(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary: Callable):
    q = _heads(attn, "q", x)
    return rotary(q, q, cos, sin)[0]


def _grouped(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[batch, heads, tokens, d] -> [batch, kv_heads, groups * tokens, d]: GQA without copying keys/values."""
    b, h, t, d = q.shape
    return q.reshape(b, kv_heads, (h // kv_heads) * t, d)


def prompt_keys_values(layer, prompt_h, prompt_rope, rotary) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt's rotated keys and values [batch, kv_heads, prompt, head_dim] of one layer, recomputed from its
    input states prompt_h [batch, prompt, hidden] (when the layer could not hand over its own)."""
    normed = layer.input_layernorm(prompt_h)
    return _keys(layer.self_attn, normed, *prompt_rope, rotary), _values(layer.self_attn, normed)


def side_layer_step(layer, x, x_rope, x_mask, prompt_kv, prompt_bias, rotary):
    """Advance side tokens x [batch, side, hidden] (the glimpse, or a completion) through one decoder layer.

    They attend to the prompt with an additive per-key bias prompt_bias [batch, prompt] (0 = visible,
    -inf = hidden, log p = soft keep), and causally to each other (x_mask [batch, side] marks real side tokens).
    Nothing in the prompt attends to them. prompt_kv: the layer's rotated prompt keys and values
    ([batch, kv_heads, prompt, head_dim] each).
    """
    attn = layer.self_attn
    normed = layer.input_layernorm(x)
    q = _query(attn, normed, *x_rope, rotary)
    k_x, v_x = _keys(attn, normed, *x_rope, rotary), _values(attn, normed)
    k_prompt, v_prompt = prompt_kv
    kv_heads, prompt = k_prompt.shape[1], k_prompt.shape[2]
    batch, heads, side, head_dim = q.shape
    eye = torch.eye(side, dtype=torch.bool, device=x.device)
    causal = (torch.ones_like(eye).tril() & x_mask.bool()[:, None, :]) | eye
    side_bias = torch.zeros(causal.shape, device=x.device).masked_fill(~causal, float("-inf"))
    bias = torch.cat([prompt_bias.float()[:, None, :].expand(-1, side, -1), side_bias], dim=-1)
    # Prompt and side keys/values stay apart (no concatenated copy of the prompt's): only the small scores are joined.
    grouped_q = _grouped(q, kv_heads)
    scores = torch.cat([grouped_q @ k_prompt.transpose(-1, -2), grouped_q @ k_x.transpose(-1, -2)], dim=-1)
    probs = (scores.float().view(batch, heads, side, -1) * attn.scaling + bias[:, None]).softmax(-1)
    probs = _grouped(probs.to(v_x.dtype), kv_heads)
    out = (probs[..., :prompt] @ v_prompt + probs[..., prompt:] @ v_x).view(batch, heads, side, head_dim)
    x = x + attn.o_proj(out.transpose(1, 2).reshape(batch, side, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def glimpse_readout(
    layer, g, prompt_h, prompt_rope, g_rope, prompt_mask, rotary, readout: str, prompt_keys=None
) -> torch.Tensor:
    """Per-head logits q.k/sqrt(d) of the glimpse query against every prompt key at layer K: [batch, heads, prompt].

    With readout="log_softmax" they are normalised over the prompt keys and the glimpse's own key. The prompt keys
    come from prompt_keys (the layer's cache) or are computed from prompt_h.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(g)
    q = _query(attn, x, *g_rope, rotary)
    if prompt_keys is None:
        prompt_keys = _keys(attn, layer.input_layernorm(prompt_h), *prompt_rope, rotary)
    batch, heads = q.shape[:2]
    scores = (_grouped(q, prompt_keys.shape[1]) @ prompt_keys.transpose(-1, -2)).float()
    scores = scores.view(batch, heads, -1) * attn.scaling
    if readout == "log_softmax":
        k_g = _keys(attn, x, *g_rope, rotary)
        self_score = (_grouped(q, k_g.shape[1]) @ k_g.transpose(-1, -2)).float().view(batch, heads, 1) * attn.scaling
        masked = scores.masked_fill(~prompt_mask.bool()[:, None, :], float("-inf"))
        scores = scores - torch.logsumexp(torch.cat([masked, self_score], dim=-1), dim=-1, keepdim=True)
    return scores


def _last_token_attention(layer, h, rope, prompt_mask, rotary, prompt_keys=None) -> torch.Tensor:
    """FastV's signal: attention of the last prompt token over the prompt keys at this layer, mean over heads.

    h: [batch, prompt, hidden] (the layer's input). Returns [batch, prompt].
    """
    last_rope = (rope[0][:, -1:], rope[1][:, -1:])
    logits = glimpse_readout(layer, h[:, -1:], h, rope, last_rope, prompt_mask, rotary, "logits", prompt_keys)
    logits = logits.masked_fill(~prompt_mask.bool()[:, None, :], float("-inf"))
    return logits.softmax(-1).mean(1)
