"""Random-init models created where they will run: every family's tiny builder (and the benchmarks' published shapes,
which reach billions of parameters) go through `instantiate`."""

from __future__ import annotations

import torch


def instantiate(model_cls, config, seed: int, attn_implementation: str, device=None, dtype=torch.float32):
    """`model_cls(config)` in eval mode, created on `device` (default CPU) in `dtype` (no CPU fp32 copy first, so a 7B
    shape fits a GPU directly), its weights drawn from `seed` on a private RNG stream: the same seed gives the same
    weights without disturbing the caller's CPU RNG. Buffers computed in fp32 (rotary frequencies) stay so, as
    `from_pretrained` leaves them."""
    config._attn_implementation = attn_implementation
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device(device or "cpu"):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            model = model_cls(config)
        finally:
            torch.set_default_dtype(previous)
    return model.eval()
