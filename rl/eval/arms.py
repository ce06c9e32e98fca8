"""One pruner over one VQA set: batched greedy generation, the metric, token counts and timing per sample.

Timing: a stopping criterion stamps the clock after every generated token of the generate call. Prefill = start of
the call to the first stamp (vision encoder, prefill forward, first token); decode per token = the mean gap between
later stamps (one decode step of the whole batch). Both are per batch. Downsampling shrinks each image by sqrt(keep
ratio) per side and lowers the processor's pixel bounds by the keep ratio, so an image gets about keep-ratio times its
visual tokens (the patch grid rounds it; the measured ratio is reported).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteriaList

from ...models.clock import StepClock
from ..data.conversation import image_token_id
from .report import arm_summary
from .settings import DOWNSAMPLE, GLIMPSE, UNPRUNED, parse_pruner_spec

NOT_COLUMNS = ("images", "prompt")
GROUP_COLUMN = "kind"
"""Rows that carry this column (the built-in sets' question kind) also get the metric per value."""


@dataclass
class PrunerSetup:
    """How one pruner of the comparison runs: the generate keywords that select it, and the inputs it sees."""

    name: str
    generate_kwargs: dict = field(default_factory=dict)
    target_keep_ratio: float | None = None
    shrink: float | None = None
    """Downsampling: the fraction of each image's pixels (and of max_pixels) kept."""


def pruner_setup(name: str, keep_ratio: float | None, seed: int) -> PrunerSetup:
    from ...models.baselines import TrainingFreePruner

    if name == GLIMPSE:
        return PrunerSetup(name)
    if name == UNPRUNED:
        return PrunerSetup(name, {"glimpse_mode": "off"})
    if name == DOWNSAMPLE:
        return PrunerSetup(name, {"glimpse_mode": "off"}, keep_ratio, shrink=keep_ratio)
    selector, layer = parse_pruner_spec(name)
    pruner = TrainingFreePruner.build(selector, keep_ratio=keep_ratio, seed=seed, layer=layer)
    return PrunerSetup(name, {"glimpse_pruner": pruner}, keep_ratio)


def encode(processor, rows: list[dict], shrink: float | None = None) -> dict:
    """Left-padded prompt batch; `shrink` keeps that fraction of every image's pixels (downsampling)."""
    texts = [processor.apply_chat_template(row["prompt"], add_generation_prompt=True) for row in rows]
    images = [image for row in rows for image in row["images"]]
    kwargs = {}
    if shrink is not None and shrink < 1.0:
        from ...models import processor_adapter

        kwargs = processor_adapter(processor).shrink_kwargs(processor, shrink)
        scale = math.sqrt(shrink)
        images = [im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale)))) for im in images]
    return dict(processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left", **kwargs))


class Batches:
    """The batches of one sample set: each batch's rows (`samples[i]` of a lazy dataset decodes its images anew) and
    model inputs. With `keep`, each is made once and shared by every arm that runs on the set, whose inputs do not
    depend on the pruner (a downsampling arm's smaller images apart, and processors of other settings apart). Kept
    batches hold their pixels: `keep` is for many arms on a set that fits in memory (the reproduction's few hundred
    small images); `glimpserl eval` makes them per arm."""

    def __init__(self, samples, batch_size: int, keep: bool = False):
        self.samples, self.batch_size, self.keep = samples, batch_size, keep
        self.ranges = [range(s, min(s + batch_size, len(samples))) for s in range(0, len(samples), batch_size)]
        self._rows: dict[int, list[dict]] = {}
        self._inputs: dict[tuple, dict] = {}
        self._settings: dict[int, tuple[object, str]] = {}

    def rows(self, number: int) -> list[dict]:
        if number in self._rows:
            return self._rows[number]
        rows = [self.samples[i] for i in self.ranges[number]]
        if self.keep:
            self._rows[number] = rows
        return rows

    def inputs(self, processor, number: int, shrink: float | None = None) -> dict:
        key = (self._processor_settings(processor), number, shrink)
        if key in self._inputs:
            return self._inputs[key]
        inputs = encode(processor, self.rows(number), shrink)
        if self.keep:
            self._inputs[key] = inputs
        return inputs

    def _processor_settings(self, processor) -> str:
        """What makes two processors encode alike: the image processor's settings, the chat template and the
        vocabulary size (the processor is kept beside them, so its id stays its own)."""
        if id(processor) not in self._settings:
            text = f"{processor.image_processor.to_json_string()}|{processor.chat_template}|{len(processor.tokenizer)}"
            self._settings[id(processor)] = (processor, text)
        return self._settings[id(processor)][1]


def generate(model, inputs: dict, arm: PrunerSetup, max_new_tokens: int):
    """Greedy generate; returns (output, prefill seconds, decode seconds, decode steps)."""
    clock = StepClock()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
            stopping_criteria=StoppingCriteriaList([clock]),
            **arm.generate_kwargs,
        )
    stamps = clock.stamps or [time.perf_counter()]
    return out, stamps[0] - start, stamps[-1] - stamps[0], len(stamps) - 1


def run_arm(
    model,
    processor,
    samples,
    arm: PrunerSetup,
    reward,
    batch_size: int,
    max_new_tokens: int,
    group_column: str | None = None,
    batches: Batches | None = None,
) -> dict:
    """Generate, score and measure one pruner over all samples; returns its summary with per-sample records (and the
    metric per value of `group_column`, e.g. the question kind, when rows carry it). `batches`: the set's batches,
    kept across the arms of one comparison (default: made for this arm)."""
    image_token = image_token_id(processor)
    device = next(model.parameters()).device
    if batches is None:
        batches = Batches(samples, batch_size)
    elif batches.samples is not samples or batches.batch_size != batch_size:
        raise ValueError("run_arm got batches of another sample set or batch size than it was asked to run.")
    records, timings = [], []
    started = time.perf_counter()
    for number in tqdm(range(len(batches.ranges)), desc=f"eval {arm.name}", leave=False):
        rows = batches.rows(number)
        inputs = {k: v.to(device) for k, v in batches.inputs(processor, number, arm.shrink).items()}
        if number == 0:  # warm-up: first-call allocations and kernel choices stay out of the timings
            generate(model, inputs, arm, 2)
        out, prefill, decode, steps = generate(model, inputs, arm, max_new_tokens)
        timings.append({"prefill_s": prefill, "decode_s": decode, "decode_steps": steps})
        texts = processor.batch_decode(out.sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        # A downsampling arm's reference: the original images' token counts.
        original = batches.inputs(processor, number) if arm.shrink is not None else None
        counts = token_counts(out, inputs, image_token, original)
        columns = {key: [row[key] for row in rows] for key in rows[0] if key not in NOT_COLUMNS}
        scores = reward(
            completions=texts,
            prompts=[row["prompt"] for row in rows],
            **columns,
            prune_ratio=[1.0 - c["keep_ratio"] for c in counts],
            kept_tokens=[c["kept_tokens"] for c in counts],
            visual_tokens=[c["visual_tokens"] for c in counts],
        )
        result = getattr(getattr(out.cache, "glimpse_state", None), "result", None)
        for b, (row, text, score, count) in enumerate(zip(rows, texts, scores, counts, strict=True)):
            boxes = box_scores(result, b, row)
            group = {"group": row[group_column]} if group_column and row.get(group_column) is not None else {}
            records.append(
                {"row": row.get("source_row"), "prediction": text, "score": score, **count, **boxes, **group}
            )
    return arm_summary(arm.name, arm.target_keep_ratio, records, timings, time.perf_counter() - started)


def token_counts(out, inputs: dict, image_token: int, original: dict | None = None) -> list[dict]:
    """Per sample: visual tokens, kept visual tokens, keep ratio, and KV length (cached tokens) after prefill.
    `original`: the inputs of the same rows at full size, for an arm that shrank the images (their visual tokens are
    the reference)."""
    state = getattr(out.cache, "glimpse_state", None)
    if state is not None:  # pruned prefill: the cache holds the text and the kept visual tokens
        result = state.result
        visual, kept, kv = result.num_visual.tolist(), result.num_kept.tolist(), state.attention_mask.sum(1).tolist()
    else:
        kept = (inputs["input_ids"] == image_token).sum(1).tolist()
        kv = inputs["attention_mask"].sum(1).tolist()
        visual = kept
        if original is not None:
            visual = (original["input_ids"] == image_token).sum(1).tolist()
    return [
        {"visual_tokens": int(v), "kept_tokens": int(k), "keep_ratio": k / max(v, 1), "kv_length": int(n)}
        for v, k, n in zip(visual, kept, kv, strict=True)
    ]


def box_scores(result, sample: int, row: dict) -> dict:
    """Box recall / precision of the kept tokens of a one-image row with boxes; {} otherwise (or when unpruned)."""
    from ..trainers.losses import kept_box_scores

    if result is None:
        return {}
    sizes = [image.size for image in row["images"]]
    scores = kept_box_scores(result, result.keep_mask, sample, row.get("boxes"), sizes)
    return {} if scores is None else {"box_recall": scores[0], "box_precision": scores[1]}
