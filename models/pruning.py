"""Family-agnostic pruning: from VIP logits to a keep mask, and from a keep mask to a shorter sequence.

Layout convention: after pruning, each sample's surviving columns keep their order and are right-aligned (left
padding), so the last columns of every row (the end of the prompt and any completion) stay aligned across the
batch, exactly as in the unpruned, left-padded input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import GlimpseConfig


@dataclass
class GlimpseResult:
    """What the glimpse decided for one forward pass; attached to model outputs as `output.glimpse` and to the
    generation cache as `cache.glimpse_state.result`.

    All masks are aligned with the input columns `[batch, seq]` of the forward call that ran the glimpse.
    """

    visual_mask: torch.Tensor
    """[batch, seq] bool: visual (image) tokens."""
    keep_mask: torch.Tensor
    """[batch, seq] bool: columns that survive layer K: every text column, the kept visual ones (prompt padding
    is dropped in prune mode)."""
    logits: torch.Tensor
    """[batch, seq] float: VIP logits at visual columns, 0 elsewhere."""
    image_tokens: list[list[int]]
    """Per sample, the number of visual tokens of each image."""
    image_kept: list[list[int]]
    """Per sample, the number of kept visual tokens of each image."""
    kept_index: torch.Tensor | None = None
    """Prune mode: [batch, kept_len] column of each position of the pruned sequence (see `pruned_layout`)."""
    keep_prob: torch.Tensor | None = None
    """Masked mode: [batch, seq] keep probability applied to each visual key in layers after K (1 elsewhere)."""
    image_grids: list[list[tuple[int, int]]] | None = None
    """Per sample, the (rows, cols) token grid of each image (row-major order of its visual tokens)."""

    def image_values(self, values: torch.Tensor, sample: int) -> list[torch.Tensor]:
        """Split a [batch, seq] tensor's visual entries of one sample into one [rows, cols] grid per image."""
        flat = values[sample][self.visual_mask[sample]]
        chunks = torch.split(flat, self.image_tokens[sample])
        return [chunk.view(*grid) for chunk, grid in zip(chunks, self.image_grids[sample])]

    @property
    def num_visual(self) -> torch.Tensor:
        """[batch] visual tokens per sample."""
        return self.visual_mask.sum(1)

    @property
    def num_kept(self) -> torch.Tensor:
        """[batch] kept visual tokens per sample."""
        return (self.visual_mask & self.keep_mask).sum(1)

    @property
    def keep_ratio(self) -> torch.Tensor:
        """[batch] kept / total visual tokens."""
        return self.num_kept.float() / self.num_visual.clamp(min=1).float()

    @property
    def prune_ratio(self) -> torch.Tensor:
        """[batch] 1 - keep_ratio."""
        return 1.0 - self.keep_ratio

    def stats(self) -> list[dict]:
        """One plain dict per sample: visual tokens, kept tokens, keep ratio, and the same per image."""
        rows = []
        for i, (tokens, kept) in enumerate(zip(self.image_tokens, self.image_kept)):
            rows.append(
                {
                    "visual_tokens": int(self.num_visual[i]),
                    "kept_tokens": int(self.num_kept[i]),
                    "keep_ratio": float(self.keep_ratio[i]),
                    "images": [{"visual_tokens": t, "kept_tokens": k} for t, k in zip(tokens, kept)],
                }
            )
        return rows


def image_segments(visual_mask: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Contiguous runs of visual columns per sample, as (start, end) pairs; one run is one image."""
    segments = []
    padded = torch.nn.functional.pad(visual_mask.int(), (1, 1))
    edges = padded[:, 1:] - padded[:, :-1]
    for row in edges:
        starts = (row == 1).nonzero().flatten().tolist()
        ends = (row == -1).nonzero().flatten().tolist()
        segments.append(list(zip(starts, ends)))
    return segments


def decide_keep(
    logits: torch.Tensor,
    visual_mask: torch.Tensor,
    segments: list[list[tuple[int, int]]],
    config: GlimpseConfig,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hard keep mask [batch, seq] bool from VIP logits [batch, seq], applied per image.

    A visual token is kept when sigmoid(logit) > threshold, or, given uniform noise [batch, seq], when
    noise < sigmoid(logit) (a Bernoulli sample of the VIP's keep probability, as RL rollouts use). An image keeps at
    most max(min_keep, floor(max_keep_ratio * n)) and at least min_keep tokens (by logit).
    """
    keep = ~visual_mask
    probs = torch.sigmoid(logits.float())
    for b, runs in enumerate(segments):
        for start, end in runs:
            n = end - start
            scores = logits[b, start:end].float()
            if noise is None:
                chosen = probs[b, start:end] > config.threshold
            else:
                chosen = noise[b, start:end].to(probs.device) < probs[b, start:end]
            count = int(chosen.sum())
            cap = n
            if config.max_keep_ratio is not None:
                cap = max(config.min_keep, int(config.max_keep_ratio * n))
            target = min(max(count, config.min_keep), cap, n)
            if target != count:
                chosen = torch.zeros_like(chosen)
                chosen[scores.topk(target).indices] = True
            keep[b, start:end] = chosen
    return keep


def pruned_layout(keep_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-aligned gather index for the kept columns.

    keep_mask: [batch, seq] bool. Returns index [batch, kept_len] (long) and valid [batch, kept_len] (bool);
    kept_len = the largest kept count in the batch; invalid slots (left padding) point at some dropped column and
    must be masked out.
    """
    kept_len = int(keep_mask.sum(1).max())
    # A stable sort of the bools moves dropped columns first and kept ones last, each group in original order.
    order = torch.sort(keep_mask.to(torch.int8), dim=1, stable=True).indices
    index = order[:, order.shape[1] - kept_len :]
    return index, keep_mask.gather(1, index)


def gather_columns(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather along sequence dimension `dim` of x with index [batch, kept_len] (batch is dim 0)."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = index.shape
    expanded = index.view(shape).expand(*[s if i != dim else index.shape[1] for i, s in enumerate(x.shape)])
    return x.gather(dim, expanded)


def gather_cache_layers(cache, layers: range, index: torch.Tensor) -> None:
    """Shrink the key/value states of the given cache layers to the pruned layout (in place).

    cache: a transformers `Cache` whose layers store keys/values as [batch, kv_heads, seq, head_dim].
    """
    for layer_idx in layers:
        layer = cache.layers[layer_idx]
        layer.keys = gather_columns(layer.keys, index, dim=2)
        layer.values = gather_columns(layer.values, index, dim=2)


def key_bias(keep_prob: torch.Tensor, visual_mask: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Additive log-mask [batch, seq] on keys: log(keep_prob) on visual columns, 0 elsewhere.

    A hard 0 becomes -inf so that a hard mask equals physical removal exactly.
    """
    p = keep_prob.float()
    soft = torch.log(p.clamp(min=floor))
    bias = torch.where(p <= 0, torch.full_like(soft, float("-inf")), soft)
    return torch.where(visual_mask, bias, torch.zeros_like(bias))
