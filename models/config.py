"""`GlimpseConfig`: the knobs of the glimpse token and the Visual token Importance Predictor (VIP)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

# Fraction of the decoder depth at which the glimpse reads attention: the reference settings are
# 18 of 28 layers (Qwen2.5-VL-7B), 23 of 36 (3B), 21 of 32 (LLaVA-1.5-7B) and 26 of 40 (13B); 0.65 * depth,
# rounded, reproduces all four.
DEFAULT_LAYER_FRACTION = 0.65


@dataclass
class GlimpseConfig:
    """How the glimpse token reads the image and how the VIP turns that into a keep mask.

    Fields left at `None` are derived from the base model by `resolve()` (called by `add_glimpse`).
    """

    layer: int | None = field(
        default=None,
        metadata={
            "help": "Decoder layer K (0-based) whose attention the glimpse reads; visual tokens are dropped after it. "
            "Default: round(0.65 * depth), at most depth - 2 (18 of 28 for Qwen2.5-VL-7B, 23 of 36 for 3B)."
        },
    )
    threshold: float = field(
        default=0.5,
        metadata={"help": "Keep a visual token when sigmoid(VIP logit) > threshold. 0.0 keeps every visual token."},
    )
    max_keep_ratio: float | None = field(
        default=None,
        metadata={"help": "Optional cap on the fraction of each image's visual tokens kept (top-k by VIP logit)."},
    )
    min_keep: int = field(default=1, metadata={"help": "Each image keeps at least this many visual tokens."})
    readout: Literal["logits", "log_softmax"] | None = field(
        default=None,
        metadata={
            "help": "Glimpse read-out per head: raw scaled logits q.k/sqrt(d) or their log-softmax over all keys. "
            "Default: the model family's (logits for Qwen2-VL / Qwen2.5-VL, log_softmax for LLaVA)."
        },
    )
    state_readout: Literal["glimpse", "last_prompt"] | None = field(
        default=None,
        metadata={
            "help": "Also score every visual token against a hidden state entering layer K through a learned "
            "query/key pair (query from that state; key from the token's vision features, turned at the token's grid "
            "cell by a rotary embedding with learned 2D frequencies; vip_num_heads more features per token): the "
            "glimpse's own "
            "state, or the last prompt token's (where the answer starts, which has read the question). The per-head "
            "logits go through the frozen layer K's projections only; this lets the VIP follow a cue in the question "
            "that they do not express (e.g. a place named by number). None: the paper's VIP."
        },
    )
    vip_hidden_size: int = field(default=256, metadata={"help": "Width of the VIP."})
    vip_intermediate_size: int = field(default=512, metadata={"help": "Width of the VIP's SwiGLU feed-forward."})
    vip_num_heads: int = field(default=4, metadata={"help": "Attention heads in each VIP block."})
    vip_num_blocks: int = field(
        default=4, metadata={"help": "Number of VIP blocks (conditional self-attention + FFN)."}
    )
    vision_feature_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "Vision-encoder blocks (0-based; the output of block i) whose features condition VIP block i, one "
            "per VIP block. Default: the model family's (Qwen: evenly spaced from the last block down, 31, 23, 15, 7 "
            "of 32; LLaVA: from the projector's feature block down, 22, 16, 10, 4 of CLIP-L's 24)."
        },
    )
    vip_rope_theta: float = field(default=100.0, metadata={"help": "Base of the VIP's 2D rotary embedding."})
    vip_init_bias: float = field(
        default=2.0,
        metadata={"help": "Initial bias of the VIP output logit: > 0 starts from keeping most tokens."},
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"GlimpseConfig.threshold must be in [0, 1), got {self.threshold}.")
        if self.max_keep_ratio is not None and not 0.0 < self.max_keep_ratio <= 1.0:
            raise ValueError(f"GlimpseConfig.max_keep_ratio must be in (0, 1], got {self.max_keep_ratio}.")
        if self.min_keep < 1:
            raise ValueError(f"GlimpseConfig.min_keep must be >= 1, got {self.min_keep}.")
        if self.readout not in (None, "logits", "log_softmax"):
            raise ValueError(f"GlimpseConfig.readout must be 'logits' or 'log_softmax', got {self.readout!r}.")
        if self.state_readout not in (None, "glimpse", "last_prompt"):
            raise ValueError(
                f"GlimpseConfig.state_readout must be 'glimpse', 'last_prompt' or None, got {self.state_readout!r}."
            )
        if self.vip_hidden_size % (2 * self.vip_num_heads) or (self.vip_hidden_size // self.vip_num_heads) % 4:
            raise ValueError(
                "GlimpseConfig.vip_hidden_size / vip_num_heads must be a multiple of 4 (2D rotary embedding), got "
                f"{self.vip_hidden_size} / {self.vip_num_heads}."
            )

    def resolve(
        self,
        num_text_layers: int,
        num_vision_layers: int,
        readout: str = "logits",
        feature_layers: list[int] | None = None,
    ) -> GlimpseConfig:
        """Return a copy with the model-dependent defaults filled in and checked against the model's depth.

        readout, feature_layers: the model family's defaults for the fields left unset (feature_layers None: evenly
        spaced from the last vision block down)."""
        layer = self.layer
        if layer is None:
            layer = min(round(DEFAULT_LAYER_FRACTION * num_text_layers), num_text_layers - 2)
        if not 0 <= layer <= num_text_layers - 2:
            raise ValueError(
                f"GlimpseConfig.layer={layer} is outside [0, {num_text_layers - 2}] for a {num_text_layers}-layer "
                "decoder: at least one layer must run after the glimpse for pruning to save anything."
            )
        feats = self.vision_feature_layers if self.vision_feature_layers is not None else feature_layers
        if feats is None:
            n = self.vip_num_blocks
            feats = [num_vision_layers - 1 - (i * num_vision_layers) // n for i in range(n)]
        if len(feats) != self.vip_num_blocks:
            raise ValueError(
                f"GlimpseConfig.vision_feature_layers has {len(feats)} entries but vip_num_blocks is "
                f"{self.vip_num_blocks}: give one vision block per VIP block."
            )
        bad = [i for i in feats if not 0 <= i < num_vision_layers]
        if bad:
            raise ValueError(
                f"GlimpseConfig.vision_feature_layers {bad} are outside the vision encoder's {num_vision_layers} blocks."
            )
        return dataclasses.replace(
            self, layer=layer, readout=self.readout or readout, vision_feature_layers=list(feats)
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GlimpseConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown GlimpseConfig keys {unknown}; valid keys: {sorted(known)}.")
        return cls(**data)
