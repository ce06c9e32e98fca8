"""Held-out check of a trained glimpse with the HARD keep mask (what inference does): keep ratio, kept tokens,
box recall / precision, and the answer KL of the physically pruned model against the unpruned one.

It also reports operating points: keep ratio and box recall / precision if the keep threshold were each of
`OPERATING_THRESHOLDS` (from the same VIP logits). The deployment threshold itself is picked on a validation split by
`calibrate_threshold` (a target keep ratio), never on the held-out split.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from tqdm.auto import tqdm

from ...models import glimpse_module
from ...models.pruning import decide_keep, image_segments
from ..data.collate import GlimpseCollator, model_inputs
from ..trainers import losses

OPERATING_THRESHOLDS = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)


def _box_scores(result, keep: torch.Tensor, batch) -> list[tuple[float, float]]:
    """(recall, precision) of `keep` [batch, seq] for each single-image row of the batch that has boxes."""
    scores = [
        losses.kept_box_scores(result, keep, b, boxes, sizes)
        for b, (boxes, sizes) in enumerate(zip(batch["boxes"], batch["image_sizes"]))
    ]
    return [s for s in scores if s is not None]


@torch.no_grad()
def evaluate_glimpse(model, processor, samples, batch_size: int = 4, max_answer_tokens: int = 32) -> dict:
    """Average metrics over `samples` (conversational rows with answers and optional boxes)."""
    collate = GlimpseCollator(processor, max_answer_tokens)
    was_training = model.training
    model.eval()
    totals: dict[str, list[float]] = {"keep_ratio": [], "kept_tokens": [], "visual_tokens": [], "answer_kl": []}
    recalls, precisions = [], []
    points = {t: {"keep_ratio": [], "box_recall": [], "box_precision": []} for t in OPERATING_THRESHOLDS}
    device = next(model.parameters()).device
    config = glimpse_module(model).config
    for start in tqdm(range(0, len(samples), batch_size), desc="evaluating glimpse", leave=False):
        batch = collate([samples[i] for i in range(start, min(start + batch_size, len(samples)))])
        inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
        labels = batch["labels"].to(device)
        teacher = model(**inputs, glimpse_mode="off", use_cache=False).logits
        pruned = model(**inputs, glimpse_prompt_length=batch["prompt_length"], use_cache=False)
        result = pruned.glimpse
        # With a completion (the answer), the pruned pass returns it at the input's columns, as the teacher's.
        totals["answer_kl"].append(losses.answer_kl(teacher, pruned.logits, labels).item())
        totals["keep_ratio"] += result.keep_ratio.tolist()
        totals["kept_tokens"] += result.num_kept.float().tolist()
        totals["visual_tokens"] += result.num_visual.float().tolist()
        for r, p in _box_scores(result, result.keep_mask, batch):
            recalls.append(r)
            precisions.append(p)
        segments = image_segments(result.visual_mask)
        for t in OPERATING_THRESHOLDS:
            keep = decide_keep(result.logits, result.visual_mask, segments, replace(config, threshold=t))
            ratio = ((keep & result.visual_mask).sum(1) / result.num_visual.clamp(min=1)).tolist()
            points[t]["keep_ratio"] += ratio
            for r, p in _box_scores(result, keep, batch):
                points[t]["box_recall"].append(r)
                points[t]["box_precision"].append(p)
    model.train(was_training)
    report = {name: sum(v) / max(len(v), 1) for name, v in totals.items()}
    report["samples"] = len(samples)
    if recalls:
        report["box_recall"] = sum(recalls) / len(recalls)
        report["box_precision"] = sum(precisions) / len(precisions)
    report["operating_points"] = [
        {"threshold": t, **{k: sum(v) / max(len(v), 1) for k, v in values.items() if v}}
        for t, values in points.items()
    ]
    return report


@torch.no_grad()
def prompt_vip_logits(model, processor, samples, batch_size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch: (VIP logits [batch, seq], visual mask [batch, seq]) of the prompts of `samples` (no answers)."""
    collate = GlimpseCollator(processor, 1)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(samples), batch_size), desc="calibrating keep threshold", leave=False):
        batch = collate([samples[i] for i in range(start, min(start + batch_size, len(samples)))])
        inputs = {k: v.to(device) for k, v in model_inputs(batch, prompt_only=True).items()}
        result = model(**inputs, use_cache=False).glimpse
        out.append((result.logits.float().cpu(), result.visual_mask.cpu()))
    model.train(was_training)
    return out


def mean_keep_ratio(batches: list[tuple[torch.Tensor, torch.Tensor]], config) -> float:
    """Mean over samples of kept / visual tokens if the keep decision used `config` (threshold, caps)."""
    ratios = []
    for logits, visual in batches:
        keep = decide_keep(logits, visual, image_segments(visual), config)
        ratios += ((keep & visual).sum(1) / visual.sum(1).clamp(min=1)).tolist()
    return sum(ratios) / max(len(ratios), 1)


def calibrate_threshold(model, processor, samples, target: float, batch_size: int = 4, steps: int = 30) -> dict:
    """The keep threshold whose mean keep ratio on `samples` (a validation split) is closest to `target`.

    The keep ratio falls as the threshold rises, so a bisection on [0, 1) finds it; the result is the threshold at
    the end of the search whose ratio is nearest the target (a plateau of equal ratios keeps its lowest threshold).
    """
    config = glimpse_module(model).config
    batches = prompt_vip_logits(model, processor, samples, batch_size)
    low, high = 0.0, 1.0
    best = (abs(mean_keep_ratio(batches, replace(config, threshold=0.0)) - target), 0.0)
    for _ in range(steps):
        mid = (low + high) / 2
        ratio = mean_keep_ratio(batches, replace(config, threshold=mid))
        best = min(best, (abs(ratio - target), mid))
        low, high = (mid, high) if ratio > target else (low, mid)
    threshold = best[1]
    return {
        "threshold": threshold,
        "target_keep_ratio": target,
        "keep_ratio": mean_keep_ratio(batches, replace(config, threshold=threshold)),
        "rows": len(samples),
    }
