"""Build the benchmark models and inputs, and measure one arm (pruned or unpruned): time, KV length, peak memory.

The model of a spec is built by its family (benchmarks/families.py: Qwen2.5-VL, Qwen3-VL or LLaVA-1.5).

The two arms share every base weight tensor: "pruned" is the model with a glimpse attached (`add_glimpse`), "unpruned"
is the stock transformers class holding the same tensors, so the baseline runs no glimpse code at all (it generates
the same tokens as `glimpse_mode="off"` on the pruned model) and its memory subprocess holds no glimpse weights.
Timing and memory are measured around exactly the call that matters and synchronise the device (CUDA) first.
"""

from __future__ import annotations

import gc
import json
import math
import multiprocessing
import os
import queue as queue_module
import tempfile
import time
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import StoppingCriteria, StoppingCriteriaList

from glimpserl.benchmarks.families import family_of
from glimpserl.models import GlimpseConfig, add_glimpse
from glimpserl.models.clock import StepClock

ARMS = ("unpruned", "pruned")
QUESTION = "What is written on the sign at the top left of the image? Answer with one word."


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines the benchmark model and input; rebuilt identically in a memory subprocess."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    layer_k: int
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    visual_tokens: int
    keep_ratio: float
    seed: int = 0
    grid: tuple[int, int] | None = None
    """(rows, columns) of visual tokens; default: the smallest square grid of at least `visual_tokens`."""
    vocab: int | None = None
    """Text vocabulary (embedding and LM-head rows); default: the tiny tokenizer's ~1.3k. Qwen2.5's is 151,936."""
    vision_intermediate: int | None = None
    """Vision MLP width; default 2.5 x the vision width."""
    tied: bool = False
    """Input embeddings and LM head share one matrix (Qwen2.5-VL-3B)."""
    dtype: str = "float32"
    attn: str = "sdpa"
    """The decoder's attention implementation (the vision tower follows transformers' default for it)."""
    images: int = 1
    """Images in the prompt, each of `grid` / `visual_tokens` visual tokens."""
    shape: str | None = None
    """The published shape this spec was built from (benchmarks.shapes), if any."""
    family: str = "qwen2_5_vl"
    """The model type (benchmarks/families.py)."""

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def closest_grid(visual_tokens: int) -> tuple[int, int]:
    """(rows, columns) whose product is closest to `visual_tokens`, columns between rows and 2 * rows, then the
    squarest: 1024 -> (32, 32), 2048 -> (32, 64), 2000 -> (40, 50)."""
    if visual_tokens < 1:
        raise ValueError(f"visual_tokens must be >= 1, got {visual_tokens}.")
    candidates = []
    for rows in range(1, math.isqrt(visual_tokens) + 2):
        cols = min(max(round(visual_tokens / rows), rows), 2 * rows)
        candidates.append((abs(rows * cols - visual_tokens), cols - rows, rows, cols))
    return min(candidates)[2:]


def _build_base(spec: ModelSpec, processor, device: torch.device):
    """A random model of the spec's family and shape (identical for identical specs), created on `device` in its
    dtype."""
    return family_of(spec.family).build(spec, processor, device)


def build_arm(spec: ModelSpec, processor, device: torch.device, arm: str, pruned=None):
    """The model of one arm. "pruned": a glimpse keeping int(keep_ratio * n) tokens per image. "unpruned": the stock
    model; given the pruned model, it holds the very same base tensors (no copy)."""
    if arm not in ARMS:
        raise ValueError(f"Unknown arm {arm!r}; choose one of {ARMS}.")
    model = _build_base(spec, processor, device)
    if arm == "pruned":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            # threshold 0 keeps every token, so the top-k cap decides: exactly int(keep_ratio * n) per image.
            add_glimpse(model, GlimpseConfig(layer=spec.layer_k, threshold=0.0, max_keep_ratio=spec.keep_ratio))
    elif pruned is not None:
        shared = {k: v for k, v in pruned.state_dict().items() if ".glimpse." not in f".{k}"}
        model.load_state_dict(shared, strict=True, assign=True)
    return model.to(device).eval()


def build_inputs(spec: ModelSpec, device: torch.device):
    """(processor, inputs): `spec.images` random images of the family's token grid for the spec (default: a square
    of at least `visual_tokens`) and a short question; pixel values in the model's dtype."""
    family = family_of(spec.family)
    processor = family.processor(spec)
    height, width = family.image_pixels(spec)
    g = torch.Generator().manual_seed(spec.seed)
    images = [
        Image.fromarray(torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy())
        for _ in range(spec.images)
    ]
    content = [*({"type": "image"} for _ in images), {"type": "text", "text": QUESTION}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    inputs["pixel_values"] = inputs["pixel_values"].to(spec.torch_dtype)
    return processor, {k: v.to(device) for k, v in inputs.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    wall: float
    """Elapsed seconds (what a user waits)."""
    cpu: float
    """CPU seconds of this process, all threads (with one thread: robust to other jobs sharing the cores)."""


def _now() -> Timing:
    return Timing(time.perf_counter(), time.process_time())


class CallTimer:
    """Times one call: CUDA events around it on a GPU (device time of the stream, after a synchronisation), else
    the wall clock; the CPU seconds of this process either way."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self._events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._events[0].record()
        self._start = _now()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self._events[1].record()
            torch.cuda.synchronize()
        end = _now()
        self.elapsed = _since(self._start, end)
        if self.cuda:
            self.elapsed.wall = self._events[0].elapsed_time(self._events[1]) / 1000.0


def _since(start: Timing, end: Timing, steps: int = 1) -> Timing:
    return Timing((end.wall - start.wall) / steps, (end.cpu - start.cpu) / steps)


@torch.inference_mode()
def time_prefill(model, inputs: dict) -> tuple[Timing, int, object]:
    """One prefill forward with a cache: (time, KV length, glimpse result or None).

    logits_to_keep=1: the LM head runs on the last position only, as in generation, in both arms.
    """
    with CallTimer(inputs["input_ids"].device) as timer:
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    return timer.elapsed, out.cache.get_seq_length(), getattr(out, "glimpse", None)


def generate(model, inputs: dict, new_tokens: int, clock: StoppingCriteria | None = None):
    criteria = StoppingCriteriaList([clock] if clock is not None else [])
    with torch.inference_mode():
        return model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # EOS cannot end an arm early
            do_sample=False,
            stopping_criteria=criteria,
            return_dict_in_generate=True,
        )


def time_decode(model, inputs: dict, new_tokens: int) -> Timing:
    """Time per decode step: from the first to the last generated token of a greedy generate, divided by the
    new_tokens - 1 forwards in between (so neither the prefill nor generate's set-up is counted)."""
    if new_tokens < 2:
        raise ValueError("Timing decode needs at least 2 new tokens.")
    clock = StepClock(now=_now)
    out = generate(model, inputs, new_tokens, clock)
    if out.sequences.shape[1] - inputs["input_ids"].shape[1] != new_tokens:
        raise RuntimeError(f"generate made {out.sequences.shape[1]} tokens, not {new_tokens}.")
    return _since(clock.stamps[0], clock.stamps[-1], new_tokens - 1)


def _tensor_bytes(model, inputs: dict) -> int:
    """Bytes of the model's parameters and buffers plus the input tensors: what is resident before a call."""
    tensors = [*model.parameters(), *model.buffers(), *(v for v in inputs.values() if isinstance(v, torch.Tensor))]
    return sum(t.numel() * t.element_size() for t in tensors)


def profiled_peak_bytes(fn) -> int:
    """Peak of the net CPU tensor bytes allocated while fn() runs, from the torch profiler's memory events.

    Each event carries the allocator's running total ("Total Allocated"); the total before the first event is the
    baseline. Run it in a fresh process: that running total only follows tensors allocated while profiling.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0),
        key=lambda e: e["ts"],
    )
    if not memory:
        return 0
    baseline = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in memory) - baseline


def peak_memory(model, inputs: dict, new_tokens: int) -> dict:
    """Peak tensor memory of one generate (prefill + new_tokens), in bytes: `before` (resident before the call),
    `delta` (peak above it) and `peak` (before + delta).

    CUDA: torch.cuda.max_memory_allocated. CPU: the torch profiler's allocation events (`profiled_peak_bytes`),
    in a fresh process (`peak_memory_subprocess`); before = weights, buffers and inputs. Both count tensors only: no
    allocator caching or fragmentation, which on a CPU depends on the allocator and on the OS reclaiming pages.
    """
    device = inputs["input_ids"].device
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        generate(model, inputs, new_tokens)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"method": "torch.cuda.max_memory_allocated", "before": before, "peak": peak, "delta": peak - before}
    before = _tensor_bytes(model, inputs)
    delta = profiled_peak_bytes(lambda: generate(model, inputs, new_tokens))
    return {"method": "torch profiler CPU tensor memory", "before": before, "peak": before + delta, "delta": delta}


def _memory_child(spec: ModelSpec, arm: str, new_tokens: int, threads: int, queue, model_kwargs: dict) -> None:
    torch.set_num_threads(threads)
    processor, inputs = build_inputs(spec, torch.device("cpu"))
    model = build_arm(spec, processor, torch.device("cpu"), arm)
    queue.put(peak_memory(model, {**inputs, **model_kwargs}, new_tokens))


def peak_memory_subprocess(
    spec: ModelSpec, arm: str, new_tokens: int, threads: int, model_kwargs: dict | None = None
) -> dict:
    """CPU: measure `peak_memory` in a fresh (spawned) process, so no earlier run's peak or cache hides it.

    model_kwargs: extra (picklable) keywords of the generate call, e.g. `glimpse_pruner` on the pruned arm.
    """
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_memory_child, args=(spec, arm, new_tokens, threads, queue, model_kwargs or {}))
    child.start()
    result = None
    while result is None and child.is_alive():
        try:
            result = queue.get(timeout=1.0)
        except queue_module.Empty:
            continue
    if result is None and not queue.empty():  # the child finished between two polls
        result = queue.get()
    child.join()
    if result is None or child.exitcode != 0:
        raise RuntimeError(f"The memory subprocess of the {arm} arm failed with exit code {child.exitcode}.")
    return result
