"""`glimpserl eval`: answer quality and cost of the glimpse against training-free pruners, on one VQA set.

Every pruner runs batched greedy generation over the same rows; the metric is a reward from `glimpserl.rewards`
(its answer extraction included), so evaluation and RL score answers the same way. Per pruner: the metric, keep
ratio, kept / visual tokens, KV length after prefill, prefill and decode time, and box recall / precision of the kept
tokens where rows have boxes. Baselines keep the glimpse's measured mean keep ratio (matched) or a fixed one.

    glimpserl eval --model builtin:tiny-qwen2_5_vl --glimpse outputs/vip --dataset builtin:synth --out eval.json
    glimpserl eval --run exports/grpo-500 --dataset data/docvqa/val.jsonl --pruners glimpse,gprune,none

Timing: a stopping criterion stamps the clock after every generated token of the generate call. Prefill = start of
the call to the first stamp (vision encoder, prefill forward, first token); decode per token = the mean gap between
later stamps (one decode step of the whole batch). Both are per batch of --batch-size rows. Downsampling shrinks
each image by sqrt(keep ratio) per side and lowers the processor's max_pixels by the keep ratio, so an image gets
about keep-ratio times its visual tokens whether or not max_pixels bounded it (min_pixels and the patch grid round
it; the measured ratio is reported).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from .eval_config import BUILTIN_MODEL, DOWNSAMPLE, GLIMPSE, UNPRUNED, EvalSettings, parse_pruner_spec
from .eval_report import arm_summary, markdown_table

logger = logging.getLogger("glimpserl")


def _synth_defaults(task: str) -> dict:
    """The built-in set a recipe gets when it leaves every synth_* key at its default (SynthArguments)."""
    from .configs import SynthArguments

    d = SynthArguments()
    return {
        "n_train": d.synth_train,
        "n_test": d.synth_test,
        "image_size": d.synth_image_size,
        "seed": d.synth_seed,
        "task": task,
        "n_val": d.synth_val,
    }


# A run's own built-in data is followed through its glimpserl_run.json (resolved paths); a bare builtin:... name
# means the set with the default synth_* settings.
BUILTIN_DATA = {"builtin:synth": _synth_defaults("glimpse"), "builtin:shapes": _synth_defaults("shapes")}
NOT_COLUMNS = ("images", "prompt")
GROUP_COLUMN = "kind"
"""Rows that carry this column (the built-in sets' question kind) also get the metric per value."""


@dataclass
class Arm:
    """One row of the comparison: how generation is called, and on which inputs."""

    name: str
    generate_kwargs: dict = field(default_factory=dict)
    target_keep_ratio: float | None = None
    shrink: float | None = None
    """Downsampling: the fraction of each image's pixels (and of max_pixels) kept."""


def make_arm(name: str, keep_ratio: float | None, seed: int) -> Arm:
    from ..models.baselines import TrainingFreePruner

    if name == GLIMPSE:
        return Arm(name)
    if name == UNPRUNED:
        return Arm(name, {"glimpse_mode": "off"})
    if name == DOWNSAMPLE:
        return Arm(name, {"glimpse_mode": "off"}, keep_ratio, shrink=keep_ratio)
    selector, layer = parse_pruner_spec(name)
    pruner = TrainingFreePruner.build(selector, keep_ratio=keep_ratio, seed=seed, layer=layer)
    return Arm(name, {"glimpse_pruner": pruner}, keep_ratio)


def run_eval(settings: EvalSettings) -> dict:
    """Evaluate every pruner of `settings`; returns the report (see `eval_report`), written to settings.out."""
    from transformers import set_seed

    from ..rewards import build_reward

    set_seed(settings.seed)
    reward = build_reward(settings.metric)
    samples, source = load_samples(settings, reward)
    model, processor = load_eval_model(settings)
    target = settings.keep_ratio
    results = []
    for name in settings.pruners:
        arm = make_arm(name, None if name in (GLIMPSE, UNPRUNED) else target, settings.seed)
        results.append(
            run_arm(model, processor, samples, arm, reward, settings.batch_size, settings.max_new_tokens, GROUP_COLUMN)
        )
        if name == GLIMPSE and settings.matched:
            target = results[-1]["keep_ratio"]
    report = {
        "settings": {**dataclasses.asdict(settings), "keep_ratio_mode": "matched" if settings.matched else "fixed"},
        "dataset": {"source": source, "rows": len(samples)},
        "baseline_keep_ratio": target if settings.baselines or DOWNSAMPLE in settings.pruners else None,
        "results": results,
    }
    report["table"] = markdown_table(report)
    if settings.out:
        out = Path(settings.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def metric_columns(reward, answer_column: str) -> dict[str, str]:
    """Dataset columns the metric reads: {column in the canonical rows: column in the source}."""
    columns = {}
    for attr, column in vars(reward).items():
        if attr.endswith("_column") and column:
            columns[column] = answer_column if attr == "answer_column" else column
    return columns


def load_samples(settings: EvalSettings, reward):
    """(conversational rows, source description); fails before any model loads if the metric lacks a column."""
    from .data import DataConfig, conversation_dataset, load_vqa
    from .data_sources import read_table
    from .synth import cached_synth

    path = settings.dataset
    if path in BUILTIN_DATA:
        path = str(cached_synth(**BUILTIN_DATA[path]) / f"{settings.split}.jsonl")
    columns = metric_columns(reward, settings.answer_column)
    table = read_table(path, settings.split)
    for source_column in columns.values():
        if source_column not in table.columns:
            raise ValueError(
                f"{table.source}: the metric {settings.metric!r} needs the column {source_column!r}, which the "
                f"dataset lacks (columns: {table.columns}). Point --answer-column at the answers, or pick another "
                "--metric."
            )
    prompt = {"question_template": settings.question_template} if settings.question_template else {}
    config = DataConfig(
        dataset=path,
        split=settings.split,
        answer_column=settings.answer_column,
        max_samples=settings.max_samples,
        system_prompt=settings.system_prompt,
        **prompt,
        extra_columns=[c for c in columns if c != "answer"] + ([GROUP_COLUMN] * (GROUP_COLUMN in table.columns)),
    )
    dataset, report = load_vqa(config)
    logger.info("%s", report.summary())
    return conversation_dataset(dataset, config), table.source


def load_eval_model(settings: EvalSettings):
    """(model with a glimpse, processor). Without glimpse weights a fresh glimpse is attached: the baselines prune
    at its layer K, and its untrained VIP is never used."""
    from ..models import GlimpseConfig, add_glimpse, glimpse_module, load_glimpse
    from ..models.loading import load_model, load_processor
    from .export import load_exported

    if settings.run_dir:
        model, processor = load_exported(
            settings.run_dir, settings.model, settings.dtype, True, settings.min_pixels, settings.max_pixels
        )
    else:
        name = settings.model or BUILTIN_MODEL
        processor = load_processor(name, settings.min_pixels, settings.max_pixels)
        model = load_model(name, settings.dtype)
        if settings.glimpse:
            load_glimpse(model, settings.glimpse)
        else:
            add_glimpse(model, GlimpseConfig())
    module = glimpse_module(model)
    overrides = {"threshold": settings.threshold, "max_keep_ratio": settings.max_keep_ratio}
    module.config = dataclasses.replace(module.config, **{k: v for k, v in overrides.items() if v is not None})
    return model.eval(), processor


class StepClock(StoppingCriteria):
    """Stamps a clock after every generated token (the prefill's included); never stops generation.

    `now` is the clock (benchmarks pass one that also reads CPU time). A CUDA device is synchronised first, so a
    stamp comes after the step's kernels.
    """

    def __init__(self, now: Callable[[], object] = time.perf_counter) -> None:
        self.now = now
        self.stamps: list = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        if input_ids.is_cuda:
            torch.cuda.synchronize(input_ids.device)
        self.stamps.append(self.now())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def encode(processor, rows: list[dict], shrink: float | None = None) -> dict:
    """Left-padded prompt batch; `shrink` keeps that fraction of every image's pixels (downsampling)."""
    texts = [processor.apply_chat_template(row["prompt"], add_generation_prompt=True) for row in rows]
    images = [image for row in rows for image in row["images"]]
    kwargs = {}
    if shrink is not None and shrink < 1.0:
        from ..models import processor_adapter

        kwargs = processor_adapter(processor).shrink_kwargs(processor, shrink)
        scale = math.sqrt(shrink)
        images = [im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale)))) for im in images]
    return dict(processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left", **kwargs))


def generate(model, inputs: dict, arm: Arm, max_new_tokens: int):
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
    model, processor, samples, arm: Arm, reward, batch_size: int, max_new_tokens: int, group_column: str | None = None
) -> dict:
    """Generate, score and measure one pruner over all samples; returns its summary with per-sample records (and the
    metric per value of `group_column`, e.g. the question kind, when rows carry it)."""
    from .data import _image_token_id

    image_token = _image_token_id(processor)
    device = next(model.parameters()).device
    batches = [range(s, min(s + batch_size, len(samples))) for s in range(0, len(samples), batch_size)]
    records, timings = [], []
    started = time.perf_counter()
    for number, indices in enumerate(tqdm(batches, desc=f"eval {arm.name}", leave=False)):
        rows = [samples[i] for i in indices]
        inputs = {k: v.to(device) for k, v in encode(processor, rows, arm.shrink).items()}
        if number == 0:  # warm-up: first-call allocations and kernel choices stay out of the timings
            generate(model, inputs, arm, 2)
        out, prefill, decode, steps = generate(model, inputs, arm, max_new_tokens)
        timings.append({"prefill_s": prefill, "decode_s": decode, "decode_steps": steps})
        texts = processor.batch_decode(out.sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        facts = token_facts(out, inputs, processor, rows, arm, image_token)
        columns = {key: [row[key] for row in rows] for key in rows[0] if key not in NOT_COLUMNS}
        scores = reward(
            completions=texts,
            prompts=[row["prompt"] for row in rows],
            **columns,
            prune_ratio=[1.0 - f["keep_ratio"] for f in facts],
            kept_tokens=[f["kept_tokens"] for f in facts],
            visual_tokens=[f["visual_tokens"] for f in facts],
        )
        result = getattr(getattr(out.cache, "glimpse_state", None), "result", None)
        for b, (row, text, score, fact) in enumerate(zip(rows, texts, scores, facts, strict=True)):
            boxes = box_scores(result, b, row)
            group = {"group": row[group_column]} if group_column and row.get(group_column) is not None else {}
            records.append(
                {"row": row.get("source_row"), "prediction": text, "score": score, **fact, **boxes, **group}
            )
    return arm_summary(arm.name, arm.target_keep_ratio, records, timings, time.perf_counter() - started)


def token_facts(out, inputs: dict, processor, rows: list[dict], arm: Arm, image_token: int) -> list[dict]:
    """Per sample: visual tokens, kept visual tokens, keep ratio, and KV length (cached tokens) after prefill."""
    state = getattr(out.cache, "glimpse_state", None)
    if state is not None:  # pruned prefill: the cache holds the text and the kept visual tokens
        result = state.result
        visual, kept, kv = result.num_visual.tolist(), result.num_kept.tolist(), state.attention_mask.sum(1).tolist()
    else:
        kept = (inputs["input_ids"] == image_token).sum(1).tolist()
        kv = inputs["attention_mask"].sum(1).tolist()
        visual = kept
        if arm.shrink is not None:  # the original images' token counts are the reference
            visual = (encode(processor, rows)["input_ids"] == image_token).sum(1).tolist()
    return [
        {"visual_tokens": int(v), "kept_tokens": int(k), "keep_ratio": k / max(v, 1), "kv_length": int(n)}
        for v, k, n in zip(visual, kept, kv, strict=True)
    ]


def box_scores(result, sample: int, row: dict) -> dict:
    """Box recall / precision of the kept tokens of a one-image row with boxes; {} otherwise (or when unpruned)."""
    from .losses import kept_box_scores

    if result is None:
        return {}
    sizes = [image.size for image in row["images"]]
    scores = kept_box_scores(result, result.keep_mask, sample, row.get("boxes"), sizes)
    return {} if scores is None else {"box_recall": scores[0], "box_precision": scores[1]}
