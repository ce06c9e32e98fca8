"""The glimpse token's embeddings and the Visual token Importance Predictor (VIP); family-agnostic.

The VIP scores every visual token of an image from two inputs:
- the glimpse read-out: per attention head, the glimpse query's logit against the token's key at layer K (with
  `state_readout`, beside it one learned logit per VIP head between a hidden state at layer K, the glimpse's or the
  last prompt token's, and the token's vision features);
- intermediate vision-encoder features of the token, one vision block per VIP block (conditioning).
Each block is pre-norm conditional self-attention (queries and keys from [x, cond], values from x) with a 2D
rotary embedding over the token grid, then a SwiGLU feed-forward. Attention is full within one image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import GlimpseConfig

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
"""Radians between successive directions of the state read-out's rotation frequencies (no two pairs line up)."""


class GlimpseEmbedding(nn.Module):
    """Learned vectors e_0..e_K mapped through a shared Linear and RMSNorm.

    e_0 is the glimpse token's input embedding; e_l (1 <= l <= K) is added to its residual stream before layer l.
    """

    def __init__(self, num_layers: int, hidden_size: int, input_scale: float = 1.0, eps: float = 1e-6):
        super().__init__()
        self.vectors = nn.Parameter(torch.randn(num_layers + 1, hidden_size) * 0.02)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.input_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.layer_norm = nn.RMSNorm(hidden_size, eps=eps)
        with torch.no_grad():
            # Start at the scale of the base model's token embeddings, and with no per-layer push, so the glimpse
            # begins as an ordinary-looking token.
            self.input_norm.weight.fill_(input_scale)
            self.layer_norm.weight.zero_()

    def forward(self, layer: int) -> torch.Tensor:
        """[hidden]: the glimpse's input embedding (layer 0) or the vector added before decoder layer `layer` >= 1.

        A forward (not a plain method) so that ZeRO-3 gathers `vectors` before it is read.
        """
        projected = self.proj(self.vectors[layer])
        return self.input_norm(projected) if layer == 0 else self.layer_norm(projected)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def grid_rotary(
    rows: torch.Tensor, cols: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """2D rotary tables: half of each head's rotation pairs follow the row, half the column.

    rows, cols: [images, tokens] (float). Returns cos, sin: [images, 1, tokens, head_dim].
    """
    quarter = head_dim // 4
    inv_freq = 1.0 / (theta ** (torch.arange(quarter, device=rows.device, dtype=torch.float32) / quarter))
    angles = torch.cat([rows[..., None] * inv_freq, cols[..., None] * inv_freq], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos(), angles.sin()


class VIPBlock(nn.Module):
    def __init__(self, config: GlimpseConfig, vision_size: int):
        super().__init__()
        d, f = config.vip_hidden_size, config.vip_intermediate_size
        self.num_heads = config.vip_num_heads
        self.attn_norm = nn.RMSNorm(d)
        self.cond = nn.Linear(vision_size, d)
        self.q_proj = nn.Linear(2 * d, d)
        self.k_proj = nn.Linear(2 * d, d)
        self.v_proj = nn.Linear(d, d)
        self.o_proj = nn.Linear(d, d)
        self.ffn_norm = nn.RMSNorm(d)
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        n_img, n_tok, _ = x.shape
        return x.view(n_img, n_tok, self.num_heads, -1).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, vision: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor
    ) -> torch.Tensor:
        """x: [images, tokens, d]; vision: [images, tokens, vision_size]; key_mask: [images, tokens] bool."""
        h = self.attn_norm(x)
        qk_in = torch.cat([h, self.cond(vision)], dim=-1)
        cos, sin = rope
        q, k, v = self._heads(self.q_proj(qk_in)), self._heads(self.k_proj(qk_in)), self._heads(self.v_proj(h))
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        x = x + self.o_proj(attn.transpose(1, 2).reshape(x.shape))
        h = self.ffn_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class StateReadout(nn.Module):
    """Per head, a learned logit between a hidden state at layer K (the query) and each visual token's vision features
    (the key, turned at the token's grid cell): the read-out the frozen layer K cannot give when its projections do not
    express the question's cue. The query is not turned (it sits at the grid's origin), so a head can address grid
    cells: a place named in the question is findable even where the vision features carry little of their position.

    The turn is the read-out's own: rotation pair p of head h turns by the angle w[h, p] . (row, col), with learned
    frequency vectors w (a rotary embedding of mixed directions, not split into a row half and a column half, so one
    pair can follow a diagonal). They start at magnitudes from pi (neighbouring cells in opposite phase) down to
    pi / 16, in directions spread by the golden angle. The angles are computed in float32. The frequencies are stored
    in the module's dtype: a bf16 copy rounds them to 8 bits (a frequency near pi by about 0.006, which moves the angle
    at row 120 by most of a radian), so train and deploy the read-out in the same dtype."""

    def __init__(self, text_hidden_size: int, vision_size: int, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.RMSNorm(text_hidden_size)
        self.query = nn.Linear(text_hidden_size, width)
        self.key = nn.Linear(vision_size, width)
        pairs = width // num_heads // 2
        magnitude = math.pi * 2.0 ** (-4.0 * torch.arange(pairs) / max(pairs - 1, 1))
        direction = GOLDEN_ANGLE * torch.arange(num_heads * pairs, dtype=torch.float32).view(num_heads, pairs)
        self.freqs = nn.Parameter(torch.stack([magnitude * direction.cos(), magnitude * direction.sin()], dim=-1))

    def forward(
        self, state: torch.Tensor, vision: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
    ) -> torch.Tensor:
        """state: [images, text_hidden] (repeated per image); vision: [images, tokens, vision_size]; rows, cols:
        [images, tokens] grid coordinates. Returns [images, tokens, heads]."""
        n_img, n_tok, _ = vision.shape
        q = self.query(self.norm(state)).view(n_img, self.num_heads, 1, -1)
        k = self.key(vision).view(n_img, n_tok, self.num_heads, -1).transpose(1, 2)
        freqs = self.freqs.float()  # the angles in float32: a bf16 angle at row 100 is off by up to a radian
        angles = (
            rows.float()[:, None, :, None] * freqs[:, None, :, 0]
            + cols.float()[:, None, :, None] * freqs[:, None, :, 1]
        )
        angles = torch.cat([angles, angles], dim=-1)
        k = k * angles.cos().to(k.dtype) + _rotate_half(k) * angles.sin().to(k.dtype)
        return ((q * k).sum(-1) * q.shape[-1] ** -0.5).transpose(1, 2)


class VIP(nn.Module):
    """Visual token Importance Predictor: one keep logit per visual token."""

    def __init__(self, config: GlimpseConfig, num_readout_heads: int, vision_size: int, text_hidden_size: int):
        super().__init__()
        d = config.vip_hidden_size
        self.rope_theta = config.vip_rope_theta
        self.head_dim = d // config.vip_num_heads
        self.state_readout: StateReadout | None = None
        if config.state_readout:
            self.state_readout = StateReadout(text_hidden_size, vision_size, d, config.vip_num_heads)
        extra = config.vip_num_heads if self.state_readout is not None else 0
        self.in_proj = nn.Linear(num_readout_heads + extra, d)
        self.blocks = nn.ModuleList(VIPBlock(config, vision_size) for _ in range(config.vip_num_blocks))
        self.out_norm = nn.RMSNorm(d)
        self.out_proj = nn.Linear(d, 1)
        with torch.no_grad():
            self.out_proj.weight.mul_(0.1)
            self.out_proj.bias.fill_(config.vip_init_bias)

    def forward(
        self,
        readout: torch.Tensor,
        vision: list[torch.Tensor],
        rows: torch.Tensor,
        cols: torch.Tensor,
        token_mask: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Score the visual tokens of a padded stack of images.

        readout: [images, tokens, readout_heads]; vision: one [images, tokens, vision_size] per block;
        rows, cols: [images, tokens] grid coordinates; token_mask: [images, tokens] bool (False = padding);
        state: [images, text_hidden] the hidden state entering layer K that `state_readout` reads (the glimpse's or
        the last prompt token's; scored against the first block's vision features).
        Returns logits [images, tokens] (padding positions are meaningless).
        """
        dtype = self.in_proj.weight.dtype
        cos, sin = grid_rotary(rows.float(), cols.float(), self.head_dim, self.rope_theta)
        rope = (cos.to(dtype), sin.to(dtype))
        readout = readout.to(dtype)
        if self.state_readout is not None:
            if state is None:
                raise ValueError("This VIP reads a hidden state (state_readout) but none was given.")
            scores = self.state_readout(state.to(dtype), vision[0].to(dtype), rows, cols)
            readout = torch.cat([readout, scores], dim=-1)
        x = self.in_proj(readout)
        for block, feats in zip(self.blocks, vision):
            x = block(x, feats.to(dtype), rope, token_mask)
        return self.out_proj(self.out_norm(x)).squeeze(-1)


class GlimpseModule(nn.Module):
    """Everything glimpserl adds to a VLM: the glimpse embeddings and the VIP (the only new parameters)."""

    def __init__(
        self,
        config: GlimpseConfig,
        text_hidden_size: int,
        num_readout_heads: int,
        vision_size: int,
        input_scale: float = 1.0,
    ):
        super().__init__()
        if config.layer is None or config.vision_feature_layers is None or config.readout is None:
            raise ValueError("GlimpseModule needs a resolved GlimpseConfig (call config.resolve(...)).")
        self.config = config
        self.embedding = GlimpseEmbedding(config.layer, text_hidden_size, input_scale)
        self.vip = VIP(config, num_readout_heads, vision_size, text_hidden_size)
