"""The keep masks of GRPO rollouts: captured from the pruned prefills that generated them, handed to every
log-prob pass over them, and scored under the VIP for its policy gradient.

Both ends are scoped hooks on the module that prunes (the inner model, which TRL's fused LM head calls):
`capture_glimpse_results` records what each pruned forward decided; `rollout_masks` gives each forward of a
log-prob pass the masks of its rows. Nothing stays registered after the `with` block.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ...models import GlimpseResult, pruning_module


@contextlib.contextmanager
def capture_glimpse_results(model: torch.nn.Module):
    """Record the GlimpseResult of every pruned forward that runs inside the block, in call order (a generation's
    decode steps repeat their prefill's result and are not recorded again)."""
    records: list[GlimpseResult] = []

    def hook(_module, _args, output):
        result = getattr(output, "glimpse", None)
        if result is not None and result.kept_index is not None and all(r is not result for r in records):
            records.append(result)

    handle = pruning_module(model).register_forward_hook(hook)
    try:
        yield records
    finally:
        handle.remove()


@contextlib.contextmanager
def rollout_masks(model: torch.nn.Module, keep: torch.Tensor, score_mask: bool):
    """Inside the block, the pruned forwards of `model` score completions of rollouts whose keep masks are the rows
    of `keep` [rollouts, prompt]: a forward pre-hook hands each call the rows after those of the calls before it
    (TRL's log-prob pass runs its chunks in order), with the prompt length keep.shape[1].

    score_mask: whether the VIP still runs to score the reused mask (only a pass it learns from needs its logits).
    Leaving the block checks that the calls covered every rollout exactly once.
    """
    used = 0

    def hook(_module, args, kwargs):
        nonlocal used
        input_ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        rows = input_ids.shape[0]
        if used + rows > keep.shape[0]:
            raise RuntimeError(f"A log-prob pass scored more than the {keep.shape[0]} rollouts it has masks for.")
        kwargs["glimpse_keep"] = keep[used : used + rows].to(input_ids.device)
        kwargs["glimpse_prompt_length"] = keep.shape[1]
        kwargs["glimpse_vip_logits"] = score_mask
        used += rows
        return args, kwargs

    handle = pruning_module(model).register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
    if used != keep.shape[0]:
        raise RuntimeError(f"A log-prob pass scored {used} of the {keep.shape[0]} rollouts it has masks for.")


def rollout_stats(results: list[GlimpseResult]) -> dict[str, list]:
    """Per rollout, in order: prune ratio, kept and total visual tokens (what reward functions receive)."""
    return {
        "prune_ratio": torch.cat([r.prune_ratio for r in results]).tolist(),
        "kept_tokens": torch.cat([r.num_kept for r in results]).tolist(),
        "visual_tokens": torch.cat([r.num_visual for r in results]).tolist(),
    }


def mask_log_prob(logits: torch.Tensor, keep: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """Mean log-probability per visual token of a Bernoulli keep mask under the VIP: [batch].

    logits, keep, visual: [batch, seq]; keep is the sampled decision, logits the VIP's keep logits.
    """
    logp = torch.where(keep, F.logsigmoid(logits.float()), F.logsigmoid(-logits.float()))
    return (logp * visual).sum(1) / visual.sum(1).clamp(min=1)
