"""`GlimpseInputs`: what a family adapter hands the pruned forward, and helpers every family builds it with."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pruning import image_segments


@dataclass
class GlimpseInputs:
    """Everything the family adapter prepared for the decoder pass."""

    inputs_embeds: torch.Tensor
    """[batch, seq, hidden] token embeddings with the image features scattered in."""
    attention_mask: torch.Tensor
    """[batch, seq] 1 = real token, 0 = padding."""
    position_ids: torch.Tensor
    """[axes, batch, seq] rotary positions (the family's adapter maps them to its decoder's layout)."""
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
    vision_attention: torch.Tensor | None = None
    """[batch, seq] attention each visual token receives inside the vision encoder (0 elsewhere), when asked for."""
    visual_residuals: list[torch.Tensor] | None = None
    """Entry i [visual tokens, hidden] is added to the visual tokens' hidden states after decoder layer i, in the
    order the visual columns come in the batch (row by row): DeepStack's vision features. After the cut only the kept
    tokens get theirs, at their new places. None: the family injects nothing."""

    def residual_rows(self) -> torch.Tensor:
        """[batch, seq] the row of each visual column in `visual_residuals`, -1 on text and padding."""
        flat = self.visual_mask.reshape(-1)
        rows = flat.long().cumsum(0) - 1
        return rows.masked_fill(~flat, -1).view_as(self.visual_mask)

    @property
    def image_counts(self) -> list[list[int]]:
        """Per sample, the visual tokens of each image."""
        return [[end - start for start, end in runs] for runs in self.segments]


def image_runs(visual_mask: torch.Tensor, expected: list[int]) -> list[list[tuple[int, int]]]:
    """The image segments of `visual_mask` [batch, seq], checked against the tokens each image gives (`expected`,
    images in order)."""
    segments = image_segments(visual_mask)
    found = [end - start for runs in segments for start, end in runs]
    if found != expected:
        raise ValueError(
            f"The prompt's image tokens do not match the images: runs of {found} image tokens for images of "
            f"{expected} tokens. A prompt truncated through its image tokens causes this: raise the maximum "
            "length or lower max_pixels."
        )
    return segments


def grid_coordinates(grids: list[tuple[int, int]], device: torch.device):
    """Row/column of each visual token per image in raster order, padded to the largest image:
    rows, cols [images, longest] (long) and a validity mask [images, longest] (bool)."""
    longest = max(rows * cols for rows, cols in grids)
    rows_out = torch.zeros(len(grids), longest, dtype=torch.long, device=device)
    cols_out = torch.zeros_like(rows_out)
    valid = torch.zeros(len(grids), longest, dtype=torch.bool, device=device)
    for i, (rows, cols) in enumerate(grids):
        idx = torch.arange(rows * cols, device=device)
        rows_out[i, : rows * cols] = idx // cols
        cols_out[i, : rows * cols] = idx % cols
        valid[i, : rows * cols] = True
    return rows_out, cols_out, valid


def pad_images(features: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """[sum(counts), size] -> [images, max(counts), size] zero-padded."""
    out = features.new_zeros(len(counts), max(counts), features.shape[-1])
    for i, chunk in enumerate(torch.split(features, counts)):
        out[i, : chunk.shape[0]] = chunk
    return out


def scatter_images(inputs_embeds: torch.Tensor, visual_mask: torch.Tensor, image_embeds: torch.Tensor):
    """Token embeddings [batch, seq, hidden] with the visual columns replaced by image_embeds [visual, hidden]."""
    return inputs_embeds.masked_scatter(
        visual_mask[..., None].to(inputs_embeds.device), image_embeds.to(inputs_embeds.dtype)
    )
