"""GRPO step cost: glimpserl's pruned trainer against plain `trl.GRPOTrainer`, one model (Qwen2.5-VL-shaped by
default, or --family / --shape), same data, LoRA and settings, side by side in one run.

    python -m glimpserl.benchmarks.grpo_step --threads 1 --json grpo_step.json
    python -m glimpserl.benchmarks.grpo_step --hidden 64 --layers 4 --heads 4 --vision-hidden 32 --vision-layers 4 \\
        --visual-tokens 64 --vocab 4096 --steps 2 --rounds 1  # smoke

Model: the prefill benchmark's shape flags (text hidden 512, 12 layers, 8 heads / 2 KV heads, K = 8; vision 8
blocks x 128), random weights, Qwen2.5's 151,936-token vocabulary (--vocab). Data: one synthetic image of
>= --visual-tokens visual tokens per prompt. Training: LoRA r 8 on the language model, --generations rollouts of one
prompt per step (--completion-tokens new tokens each), beta 0.04 (a reference pass), fp32.

Arms, each a fresh trainer on the same base weights, run in rounds (arm order reversed every other round):
- trl: the stock model under plain trl.GRPOTrainer;
- pruned: GlimpseGRPOTrainer, deterministic masks keeping int(keep_ratio * n) visual tokens per image;
- keep_all: GlimpseGRPOTrainer keeping every visual token (the trainer's own overhead);
- sample: GlimpseGRPOTrainer in `sample` mode (each rollout samples its mask, the VIP learns), same keep cap.

Per arm: the median step time (`training_step`; the first step of every run is a warm-up and is dropped) and its
split: generation (`_generate_single_turn`), log-prob passes (`_get_per_token_logps_and_entropies`: the reference
pass and the policy's forward), backward (what `training_step` spends after `compute_loss`) and the rest (rewards,
processor, loss arithmetic). Peak memory: the tensor bytes a step allocates above what was resident before it, on
the warm-up step of the first round (CUDA: max_memory_allocated; CPU: the torch profiler's allocation events, which
slow that step down). Ratios to plain TRL, and sample mode over deterministic (pruned).

On a CPU (no Triton) TRL's fused LM head scores every column of prompt + completion, in both kinds of arm; on CUDA
it scores the completion only. The split shows how much of a step that is.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import tempfile
import time

import torch
from transformers import PrinterCallback

from glimpserl.benchmarks.arguments import add_model_arguments
from glimpserl.benchmarks.families import family_of
from glimpserl.benchmarks.measure import build_arm, profiled_peak_bytes, sync
from glimpserl.benchmarks.prefill_decode import check_spec, spec_from_args
from glimpserl.benchmarks.report import model_name

ARMS = ("trl", "pruned", "keep_all", "sample")
PARTS = ("generation", "log_probs", "backward", "other")
QWEN_VOCAB = 151_936


class StepTimer:
    """Mixin for a GRPOTrainer: times the parts of every `training_step` into `step_log`; the step numbered
    `memory_step` (1-based, None = none) also gets its peak tensor memory measured."""

    step_log: list[dict]
    memory_step: int | None = None

    @contextlib.contextmanager
    def _timed(self, part: str):
        sync(self.accelerator.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            sync(self.accelerator.device)
            self._parts[part] += time.perf_counter() - start

    def training_step(self, model, inputs, num_items_in_batch):
        self._parts = dict.fromkeys(("step", "generation", "log_probs", "prepare", "loss"), 0.0)
        step = super().training_step
        with self._timed("step"):
            if len(self.step_log) + 1 == self.memory_step:
                out, memory = peak_memory_of(lambda: step(model, inputs, num_items_in_batch), self.accelerator.device)
            else:
                out, memory = step(model, inputs, num_items_in_batch), None
        parts = self._parts
        backward = parts["step"] - parts["prepare"] - parts["loss"]
        other = parts["step"] - parts["generation"] - parts["log_probs"] - backward
        split = {"generation": parts["generation"], "log_probs": parts["log_probs"], "backward": backward}
        self.step_log.append({"step": parts["step"], **split, "other": other, "peak_memory_bytes": memory})
        return out

    def _prepare_inputs(self, *args, **kwargs):
        with self._timed("prepare"):
            return super()._prepare_inputs(*args, **kwargs)

    def compute_loss(self, *args, **kwargs):
        with self._timed("loss"):
            return super().compute_loss(*args, **kwargs)

    def _generate_single_turn(self, *args, **kwargs):
        with self._timed("generation"):
            return super()._generate_single_turn(*args, **kwargs)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        with self._timed("log_probs"):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)


def peak_memory_of(fn, device: torch.device):
    """(fn(), peak tensor bytes allocated while it ran, above what was resident before it): the CUDA allocator's
    peak, or on a CPU the torch profiler's allocation events (releases of older tensors are not subtracted)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - before
    result = []
    delta = profiled_peak_bytes(lambda: result.append(fn()))
    return result[0], delta


def _dataset(folder, image_size: int, rows: int):
    from glimpserl.rl.data import DataConfig, conversation_dataset, load_vqa
    from glimpserl.rl.data.synth import write_synth

    data = write_synth(folder, n_train=rows, n_test=1, image_size=image_size, seed=0)
    config = DataConfig(dataset=str(data / "train.jsonl"), max_pixels=image_size * image_size)
    return conversation_dataset(load_vqa(config)[0], config)


def _training_args(args: argparse.Namespace, spec, output_dir: str, device: torch.device) -> dict:
    return dict(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.generations,  # one prompt's group per step
        num_generations=args.generations,
        max_completion_length=args.completion_tokens,
        learning_rate=1e-4,
        beta=0.04,
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=device.type == "cpu",
        bf16=spec.dtype == "bfloat16",
        generation_kwargs={"min_new_tokens": args.completion_tokens},  # every rollout runs to --completion-tokens
        gradient_checkpointing=False,
        remove_unused_columns=False,
        seed=args.seed,
    )


def build_trainer(arm: str, spec, args: argparse.Namespace, dataset, processor, output_dir: str, device):
    """A fresh trainer of one arm (with the StepTimer mixin) on a model built from `spec` (same base weights)."""
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from glimpserl.models import get_adapter
    from glimpserl.rewards import build_reward
    from glimpserl.rl.config.stages import GlimpseGRPOConfig
    from glimpserl.rl.trainers.grpo import GlimpseGRPOTrainer

    common = _training_args(args, spec, output_dir, device)
    if arm == "trl":
        model = build_arm(spec, processor, device, "unpruned")
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            target_modules=get_adapter(model).lora_target_modules(),
        )
        cls = type("ClockedGRPOTrainer", (StepTimer, GRPOTrainer), {})
        return cls(
            model, [build_reward("exact_match")], args=GRPOConfig(**common), train_dataset=dataset,
            processing_class=processor, peft_config=lora,
        )  # fmt: skip
    keep_ratio = 1.0 if arm == "keep_all" else spec.keep_ratio  # threshold 0 + a top-k cap: exactly this share
    model = build_arm(dataclasses.replace(spec, keep_ratio=keep_ratio), processor, device, "pruned")
    config = GlimpseGRPOConfig(
        **common,
        mask_policy="sample" if arm == "sample" else "deterministic",
        rewards=["exact_match"],
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
        lora_dropout=0.0,
    )
    cls = type("ClockedGlimpseGRPOTrainer", (StepTimer, GlimpseGRPOTrainer), {})
    return cls(model, config, dataset, processor)


def run_arm(arm: str, spec, args, dataset, processor, device, measure_memory: bool) -> dict:
    """One run of `args.steps` steps; its step records, kept tokens and resident weight bytes."""
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(arm, spec, args, dataset, processor, out, device)
        trainer.remove_callback(PrinterCallback)  # the table says it all; logs stay in trainer.state
        trainer.step_log = []
        trainer.memory_step = 1 if measure_memory else None
        weights = sum(t.numel() * t.element_size() for t in [*trainer.model.parameters(), *trainer.model.buffers()])
        trainer.train()
    kept = [h["glimpse/kept_tokens"] for h in trainer.state.log_history if "glimpse/kept_tokens" in h]
    return {"steps": trainer.step_log, "kept_tokens": kept, "weight_bytes": weights}


def _summary(runs: list[dict]) -> dict:
    timed = [record for run in runs for record in run["steps"][1:]]  # the first step of each run warms up
    memory = [r["peak_memory_bytes"] for run in runs for r in run["steps"] if r["peak_memory_bytes"] is not None]
    kept = [k for run in runs for k in run["kept_tokens"]]
    return {
        "step_s": statistics.median(r["step"] for r in timed),
        "split_s": {part: statistics.median(r[part] for r in timed) for part in PARTS},
        "steps_timed": len(timed),
        "peak_memory_bytes": memory[0] if memory else None,
        "weight_bytes": runs[0]["weight_bytes"],
        "kept_tokens": statistics.mean(kept) if kept else None,
        "all_steps": [run["steps"] for run in runs],
    }


def phase_bounds(spec, text: int, visual: int, completion: int) -> dict:
    """What pruning can save per phase at best, as a ratio to unpruned (text: the prompt's non-visual tokens).
    generation: decoding reads a KV cache of text + kept + completion instead of text + visual + completion (its
    attention share; the weights' share does not shrink); log_probs and backward: layers 0..K run on every column,
    layers K+1.. on text + kept + completion, so at least (K+1)/L + (L-K-1)/L x that share of the decoder work."""
    kept = max(1, int(spec.keep_ratio * visual))
    share = (text + kept + completion) / (text + visual + completion)
    full = (spec.layer_k + 1) / spec.layers
    return {"generation_kv": share, "log_probs": full + (1 - full) * share, "backward": full + (1 - full) * share}


def _ratios(arms: dict) -> dict:
    ratios = {}
    for arm in ARMS[1:]:
        row = {"step": arms[arm]["step_s"] / arms["trl"]["step_s"]}
        row.update({part: arms[arm]["split_s"][part] / max(arms["trl"]["split_s"][part], 1e-9) for part in PARTS})
        if arms["trl"]["peak_memory_bytes"]:
            row["peak_memory"] = arms[arm]["peak_memory_bytes"] / arms["trl"]["peak_memory_bytes"]
        ratios[arm] = row
    ratios["sample_over_pruned"] = arms["sample"]["step_s"] / arms["pruned"]["step_s"]
    return ratios


def run(args: argparse.Namespace) -> dict:
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    torch.set_num_threads(args.threads)
    spec = spec_from_args(args)
    family = family_of(spec.family)
    processor = family.processor(spec)
    side = family.grid(spec)[0]  # a square image of side x side visual tokens
    size = family.image_pixels(spec)[0]
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as folder:
        dataset = _dataset(folder, size, rows=max(8, args.steps))
        prompt = processor.apply_chat_template(dataset[0]["prompt"], add_generation_prompt=True)
        prompt_tokens = len(processor(text=[prompt], images=dataset[0]["images"])["input_ids"][0])
        for r in range(args.rounds):
            for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
                measure = r == 0 and not args.no_memory
                runs[arm].append(run_arm(arm, spec, args, dataset, processor, device, measure))
    arms = {arm: _summary(arm_runs) for arm, arm_runs in runs.items()}
    return {
        "model": dataclasses.asdict(spec),
        "device": device.type,
        "threads": args.threads,
        "visual_tokens_per_image": side * side,
        "generations": args.generations,
        "completion_tokens": args.completion_tokens,
        "lora_r": args.lora_r,
        "arms": arms,
        "ratios": _ratios(arms),
        "bounds": phase_bounds(spec, prompt_tokens - side * side, side * side, args.completion_tokens),
    }


def markdown_report(result: dict) -> str:
    arms, ratios = result["arms"], result["ratios"]
    names = {"trl": "plain trl.GRPOTrainer", "keep_all": "glimpserl, keep all"}
    names["pruned"] = f"glimpserl, keep {result['model']['keep_ratio']:.0%}"
    names["sample"] = f"glimpserl, sample mode, keep {result['model']['keep_ratio']:.0%}"
    lines = [
        "| arm | step (s) | ratio to TRL | generation | log-prob passes | backward | other | peak MB | ratio to TRL |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        a = arms[arm]
        split = " | ".join(f"{a['split_s'][part]:.2f}" for part in PARTS)
        peak = "n/a" if a["peak_memory_bytes"] is None else f"{a['peak_memory_bytes'] / 2**20:.0f}"
        step_ratio = "1.00" if arm == "trl" else f"{ratios[arm]['step']:.2f}"
        mem_ratio = "1.00" if arm == "trl" else f"{ratios[arm].get('peak_memory', float('nan')):.2f}"
        lines.append(f"| {names[arm]} | {a['step_s']:.2f} | {step_ratio} | {split} | {peak} | {mem_ratio} |")
    model = result["model"]
    lines.append(
        f"\nSample mode / deterministic (keep {model['keep_ratio']:.0%}): {ratios['sample_over_pruned']:.2f}. "
        f"Model: {model_name(model)}, text hidden {model['hidden']}, {model['layers']} layers, K = "
        f"{model['layer_k']}, vocabulary {model['vocab']}; {result['visual_tokens_per_image']} visual tokens per "
        f"image, {result['generations']} generations of {result['completion_tokens']} tokens, LoRA r "
        f"{result['lora_r']}; {result['device']}, "
        f"{result['threads']} threads; medians of {arms['trl']['steps_timed']} steps per arm (seconds). Kept visual "
        f"tokens per rollout: " + ", ".join(f"{arm} {arms[arm]['kept_tokens']:.0f}" for arm in ARMS[1:]) + "."
    )
    bounds = result["bounds"]
    lines.append(
        f"Best case per phase at keep {model['keep_ratio']:.0%} (ratio to unpruned): generation's KV length "
        f"{bounds['generation_kv']:.2f} (decoding also reads every weight, which pruning does not shrink); log-prob "
        f"passes and backward >= {bounds['log_probs']:.2f} (layers 0..K = {model['layer_k']} of {model['layers']} run "
        "on every token)."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m glimpserl.benchmarks.grpo_step",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_model_arguments(p, vocab=QWEN_VOCAB)
    p.add_argument("--visual-tokens", type=int, default=1024, help="At least this many visual tokens per image.")
    p.add_argument("--keep-ratio", type=float, default=0.1, help="Kept share of visual tokens (pruned, sample).")
    p.add_argument("--generations", type=int, default=4, help="Rollouts per prompt (one prompt per step).")
    p.add_argument(
        "--completion-tokens",
        type=int,
        default=128,
        help="New tokens per rollout (GlimpsePrune+ generates up to 128; the rollouts are made to run to it).",
    )
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2r) on the language model.")
    p.add_argument("--steps", type=int, default=3, help="Optimizer steps per run (the first is a warm-up).")
    p.add_argument("--rounds", type=int, default=2, help="Rounds over the arms.")
    p.add_argument("--no-memory", action="store_true", help="Skip the peak-memory measurement.")
    p.add_argument("--json", default=None, help="Also write the results to this JSON file.")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available.")
    if args.steps < 2 or args.rounds < 1 or not 0.0 < args.keep_ratio <= 1.0:
        p.error("--steps must be >= 2 (the first is a warm-up), --rounds >= 1 and --keep-ratio in (0, 1].")
    try:
        check_spec(spec_from_args(args))
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print(markdown_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
