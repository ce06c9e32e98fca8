"""Held-out check of a trained glimpse with the HARD keep mask (what inference does): keep ratio, kept tokens,
box recall / precision, and the answer KL of the physically pruned model against the unpruned one."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import losses
from .collate import GlimpseCollator
from .vip_trainer import MODEL_INPUTS


@torch.no_grad()
def evaluate_glimpse(model, processor, samples, batch_size: int = 4, max_answer_tokens: int = 32) -> dict:
    """Average metrics over `samples` (conversational rows with answers and optional boxes)."""
    collate = GlimpseCollator(processor, max_answer_tokens)
    was_training = model.training
    model.eval()
    totals: dict[str, list[float]] = {"keep_ratio": [], "kept_tokens": [], "visual_tokens": [], "answer_kl": []}
    recalls, precisions = [], []
    device = next(model.parameters()).device
    for start in tqdm(range(0, len(samples), batch_size), desc="evaluating glimpse", leave=False):
        batch = collate([samples[i] for i in range(start, min(start + batch_size, len(samples)))])
        inputs = {k: batch[k].to(device) for k in MODEL_INPUTS if k in batch}
        labels = batch["labels"].to(device)
        teacher = model(**inputs, glimpse_mode="off", use_cache=False).logits
        pruned = model(**inputs, glimpse_prompt_length=batch["prompt_length"], use_cache=False)
        result = pruned.glimpse
        # Align the teacher's columns with the pruned layout before comparing next-token distributions.
        index = result.kept_index
        gathered = teacher.gather(1, index[..., None].expand(-1, -1, teacher.shape[-1]))
        valid = result.keep_mask.gather(1, index)
        totals["answer_kl"].append(
            losses.answer_kl(gathered, pruned.logits, labels.gather(1, index).masked_fill(~valid, -100)).item()
        )
        totals["keep_ratio"] += result.keep_ratio.tolist()
        totals["kept_tokens"] += result.num_kept.float().tolist()
        totals["visual_tokens"] += result.num_visual.float().tolist()
        for b, (boxes, sizes) in enumerate(zip(batch["boxes"], batch["image_sizes"])):
            if boxes and len(sizes) == 1:
                keep = result.image_values(result.keep_mask, b)[0]
                r, p = losses.recall_precision(keep, losses.box_targets(boxes, sizes[0], tuple(keep.shape)))
                recalls.append(r)
                precisions.append(p)
    model.train(was_training)
    report = {name: sum(v) / max(len(v), 1) for name, v in totals.items()}
    report["samples"] = len(samples)
    if recalls:
        report["box_recall"] = sum(recalls) / len(recalls)
        report["box_precision"] = sum(precisions) / len(precisions)
    return report
