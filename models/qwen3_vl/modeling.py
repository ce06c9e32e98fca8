"""How a Qwen3-VL forward is fed to the pruned decoder. The inputs are built as for Qwen2-VL (one vision-encoder
call, the vanilla model's own M-RoPE positions, each image's merged token grid; Qwen3-VL's blocks run in raster
order, so no window permutation), plus DeepStack: the features the encoder's DeepStack mergers make from blocks
`vision_config.deepstack_visual_indexes` are added to the visual tokens after decoder layers 0, 1, 2, ... The
pruned forward adds them where the vanilla text model does, and after the cut to the kept tokens only."""

from __future__ import annotations

import torch

from ..inputs import GlimpseInputs
from ..qwen2_vl.modeling import prepare_inputs as prepare_qwen_inputs


def deepstack_residuals(encoded) -> list[torch.Tensor]:
    """One [visual tokens, text_hidden] residual per DeepStack merger (decoder layer i gets entry i), images in
    order, as the vanilla model concatenates them."""
    return [torch.cat(per_image, dim=0) for per_image in encoded.deepstack_features]


def prepare_inputs(inner, glimpse, batch: dict) -> GlimpseInputs:
    """The decoder inputs of one Qwen3-VL forward (`batch`: the inner forward's named arguments)."""
    return prepare_qwen_inputs(inner, glimpse, batch, windowed=False, residuals=deepstack_residuals)
