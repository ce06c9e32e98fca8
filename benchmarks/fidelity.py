"""Does pruning keep the answers? GlimpsePrune against every baseline on models that know their task.

The tasks (`TASKS`), each with its shipped mini model:

- shapes (builtin:mini-qwen2_5_vl, recipes/mini): the colour or shape of the one coloured object among 2-5 grey ones
  on a 336 px canvas (144 visual tokens); the answer lives in the 4 tokens (2.8%) under that object. The image says
  where to look.
- places (builtin:mini-qwen3_vl, recipes/mini_places): the colour of the object in the place the question names on
  a 3 x 3 board of look-alike objects (4 of 81 tokens), or the colour most of the nine objects have (36 tokens). The
  question says where to look, and how much.

For each task this command reruns the method on its model and writes one table:

1. stage 1, box-supervised (RECIPES/vip.yaml) and KL-only (the same recipe with --box_weight 0), each
   calibrating its deployment threshold on the validation split to the recipe's keep ratio; and, on the shapes task,
   KL-only with the straight-through gradient taken through the additive bias (--relaxation straight_through_bias),
   for contrast;
2. stage 2, GlimpsePrune+ (RECIPES/grpo.yaml, starting from the box-supervised glimpse), and again at each further
   seed the task lists (stage 2 moves between seeds: the spread beside the run of record);
3. every arm on the test split: unpruned; GlimpsePrune at its deployment threshold and at other operating points
   (thresholds calibrated on the validation split to other keep ratios, and to GlimpsePrune+'s validation keep, so
   the two stages meet at one budget); KL-only GlimpsePrune; GlimpsePrune+ at stage 1's threshold and at 0.5 (the
   mask its sampled rollouts drew most often);
   (a) every training-free pruner at the glimpse's layer K and at its keep ratio and two others; (b) each at its
   native operating point (G-Prune, DivPrune, CDPruner before the language model, FastV after layer 0,
   downsampling on smaller images);
4. where the task has one-region question kinds: on those rows alone, GlimpsePrune and then both GlimpsePrune+ rows,
   each against every training-free pruner at that glimpse's own keep ratio on them and at its layer K (the
   question, not the image, has to say which region: a pruner that does not read it keeps the wrong object), and the
   glimpse rows' answers and kept tokens by the attribute the task names (where the misses are);
5. the K sweep: stage 1 and GlimpsePrune+ retrained with the glimpse at every layer K the task lists, beside the
   (K+1)/L bound of the decoder's prefill work (how early can it cut?).

Training runs through `glimpserl train` in subprocesses, --jobs of them at a time (a stage-2 run waits for its
stage-1 run), each with one torch thread, so the trained weights do not depend on the machine's core count or on
--jobs; the evaluation runs in this process with --threads.

Columns: exact match and keep ratio (overall and per question kind), kept tokens, box recall, prefill time per batch
and its ratio to unpruned (measured in the same run). Writes fidelity.json, fidelity.md and fidelity.png into
--out-dir.

    python -m glimpserl.benchmarks.fidelity                      # every task, the full reproduction (see the README)
    python -m glimpserl.benchmarks.fidelity --task shapes        # one task
    python -m glimpserl.benchmarks.fidelity --quick              # wiring only: a few steps, a few rows
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from glimpserl.benchmarks.fidelity_report import (
    AT_PLUS,
    MODE_THRESHOLD,
    PLUS_MODE,
    markdown_report,
    plot,
    plus_seed_label,
    summary_lines,
)
from glimpserl.rl.data.synth import places

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task of the reproduction: its recipes (vip.yaml, grpo.yaml), the layers K of the sweep (empty = none),
    whether it trains the KL-only contrast with the gradient through the additive bias, the question kinds whose
    answer lives in one region (empty = no one-region comparison) and that region's share of the visual tokens, the
    stage-2 seeds trained besides the recipe's, and what to break the one-region rows down by (a function of a row's
    answer; None = no breakdown)."""

    recipes: Path
    layers: tuple[int, ...] = ()
    bias_contrast: bool = False
    one_region: tuple[str, ...] = ()
    region_share: float | None = None
    plus_seeds: tuple[int, ...] = ()
    one_region_attribute: Callable[[str], str] | None = None


TASKS = {
    "shapes": TaskSpec(RECIPES / "mini", layers=(0, 1, 2), bias_contrast=True),
    "places": TaskSpec(
        RECIPES / "mini_places",
        layers=(0, 1, 2),
        one_region=("colour",),
        region_share=places.CELLS**2 / (places.GRID * places.PLACE) ** 2,
        plus_seeds=(1,),
        one_region_attribute=places.asked_colour,
    ),
}
OTHER_RATIOS = (0.25, 0.5)
"""Keep ratios of the baselines besides the glimpse's own."""
GLIMPSE_POINTS = (0.3, 0.5, 0.9, 2.0, 4.0)
"""Other glimpse operating points, as multiples of the deployment keep ratio (calibrated on the validation split)."""
SELECTORS = ("gprune", "fastv", "divprune", "cdpruner", "random")
NATIVE = {"gprune": "input", "divprune": "input", "cdpruner": "input", "fastv": "0"}
"""Where each training-free method prunes in its own publication: before the LLM, or FastV after an early layer."""
BIAS_ONLY = ["--box_weight", "0", "--relaxation", "straight_through_bias"]
TRAIN_THREADS = 1
"""torch threads of each training run: fixed, so a run's trajectory does not depend on the machine's cores or on
--jobs (float sums are ordered by the thread split)."""
QUICK_DATA = ["--synth_train", "64", "--synth_val", "32", "--synth_test", "32"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m glimpserl.benchmarks.fidelity",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", choices=(*TASKS, "all"), default="all", help="Which task to reproduce.")
    p.add_argument(
        "--work-dir", default="outputs/fidelity", help="Training runs and logs go here (one folder a task)."
    )
    p.add_argument("--out-dir", default="benchmarks/results", help="fidelity.{json,md,png} go here.")
    p.add_argument("--eval-rows", type=int, default=None, help="Test rows per arm (default: the whole test split).")
    p.add_argument("--batch-size", type=int, default=32, help="Rows per generate call (prefill is timed per batch).")
    p.add_argument("--threads", type=int, default=None, help="torch threads for the evaluation (default: torch's).")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help=f"Training runs at a time, each with {TRAIN_THREADS} torch thread (the results do not depend on it).",
    )
    p.add_argument("--reuse", action="store_true", help="Keep finished training runs in --work-dir; train the rest.")
    p.add_argument(
        "--quick",
        action="store_true",
        help="Wiring check: 2 training steps per stage, 16 test rows, one K of the sweep, no plot of record (CI).",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs {args.jobs}: at least one training run at a time")
    return args


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One `glimpserl train` run of the reproduction: its name (the folder under the work dir), recipe, command-line
    overrides, and the run whose output it starts from (None: it starts from the recipe's model)."""

    name: str
    recipe: Path
    overrides: tuple[str, ...] = ()
    after: str | None = None


def train(job: TrainJob, work: Path, quick: bool, reuse: bool) -> dict:
    """Run `glimpserl train RECIPE` in a subprocess (the command a user types) with TRAIN_THREADS torch threads;
    returns its eval_results.json and the run's wall seconds."""
    out = work / job.name
    results = out / "eval_results.json"
    if reuse and results.is_file():
        return {"seconds": None, **json.loads(results.read_text())}
    args = [sys.executable, "-m", "glimpserl.cli", "train", str(job.recipe), "--output_dir", str(out), *job.overrides]
    if job.after is not None:
        args += ["--glimpse_init", str(work / job.after)]
    if quick:
        args += ["--max_steps", "2", "--save_strategy", "no", *QUICK_DATA]
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(TRAIN_THREADS)}
    print(f"  training {job.name} (log: {work / f'{job.name}.log'})", flush=True)
    start = time.perf_counter()
    with open(work / f"{job.name}.log", "w") as log:
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"stage {job.name} failed (exit {done.returncode}); see {work / f'{job.name}.log'}")
    seconds = time.perf_counter() - start
    print(f"  trained {job.name} in {seconds / 60:.1f} min", flush=True)
    report = json.loads(results.read_text()) if results.is_file() else {}
    return {"seconds": seconds, **report}


def train_all(jobs: list[TrainJob], work: Path, args) -> dict:
    """Every job, `args.jobs` at a time; a job starts once the run it starts from has finished. Returns each job's
    result by name, in the order of `jobs`. The first failure stops the rest (runs already written stay)."""
    names = [job.name for job in jobs]
    for job in jobs:
        if job.after is not None and names.index(job.after) > names.index(job.name):
            raise ValueError(f"training job {job.name} starts from {job.after}, which is listed after it")
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures: dict[str, concurrent.futures.Future] = {}

        def run(job: TrainJob) -> dict:
            if job.after is not None:
                futures[job.after].result()  # listed (so submitted) before this job: no slot waits on a later one
            return train(job, work, args.quick, args.reuse)

        for job in jobs:
            futures[job.name] = pool.submit(run, job)
        try:
            return {name: futures[name].result() for name in names}
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise


def _samples(settings):
    from glimpserl.rewards import build_reward
    from glimpserl.rl.eval.compare import load_samples

    samples, _ = load_samples(settings, build_reward("exact_match"))
    return samples


def _settings(run: Path, split: str, rows: int | None, batch_size: int, dataset: str | None = None):
    from glimpserl.rl.eval.compare import resolve_settings
    from glimpserl.rl.eval.settings import EvalSettings

    return resolve_settings(
        EvalSettings(
            glimpse=str(run), pruners="glimpse", split=split, max_samples=rows, batch_size=batch_size, dataset=dataset
        )
    )


def validation_samples(run: Path, calibration: dict, batch_size: int):
    """The rows the run calibrated its deployment threshold on (its validation file), never the test rows."""
    samples = _samples(_settings(run, "val", None, batch_size, dataset=calibration["source"]))
    if len(samples) != calibration["rows"]:
        raise RuntimeError(
            f"{calibration['source']} holds {len(samples)} rows, the run calibrated on {calibration['rows']}"
        )
    return samples


def validation_keep(model, processor, samples, batch_size: int) -> float:
    """Mean keep ratio of the model's glimpse at its own threshold on `samples` (validation rows): the keep decision
    is made on the prompt, so no answer is generated."""
    from glimpserl.models import glimpse_module
    from glimpserl.rl.eval.glimpse import mean_keep_ratio, prompt_vip_logits

    return mean_keep_ratio(prompt_vip_logits(model, processor, samples, batch_size), glimpse_module(model).config)


def _prior(run: Path, samples) -> float:
    """Exact match of answering each test row with its question's most frequent training answer (no image)."""
    from glimpserl.rl.data import DataConfig, load_vqa
    from glimpserl.rl.eval.report import question_prior
    from glimpserl.rl.runs.card import read_run_card

    train, _ = load_vqa(DataConfig(dataset=read_run_card(run)["data"]["dataset"], verify_images=False))
    rows = [{"question": q, "answer": a} for q, a in zip(train["question"], train["answer"])]
    held_out = [{"question": r["question"], "answer": r["answer"]} for r in samples]
    return question_prior(rows, held_out)["exact_match"]


class Evaluator:
    """Runs arms over the same test rows with one model at a time; remembers the unpruned prefill time. With an
    `attribute` (a function of a row's answer), each row also gets its exact match and kept tokens by that attribute."""

    def __init__(self, settings, samples, attribute: Callable[[str], str] | None = None):
        from glimpserl.rewards import build_reward

        self.settings, self.samples, self.reward = settings, samples, build_reward("exact_match")
        self.attribute = attribute
        self.batches = None
        """Every arm's rows and inputs (made by the first arm): each batch is loaded and encoded once for the table."""
        self.results: list[dict] = []

    def run(self, model, processor, arm, label: str, family: str, layer: str, threshold: float | None = None):
        from glimpserl.models import glimpse_module
        from glimpserl.rl.eval.arms import GROUP_COLUMN, Batches, run_arm

        if self.batches is None:
            self.batches = Batches(self.samples, self.settings.batch_size, keep=True)
        module = glimpse_module(model)
        saved = module.config
        if threshold is not None:
            module.config = dataclasses.replace(saved, threshold=threshold)
        try:
            row = run_arm(
                model,
                processor,
                self.samples,
                arm,
                self.reward,
                self.settings.batch_size,
                self.settings.max_new_tokens,
                GROUP_COLUMN,
                self.batches,
            )
        finally:
            module.config = saved
        row.update(label=label, family=family, layer=layer, threshold=threshold)
        records = row.pop("per_sample")
        if self.attribute is not None:
            row["by_attribute"] = by_attribute(records, self.samples, self.attribute)
        self.results.append(row)
        kinds = "  ".join(f"{g} {v:.3f}" for g, v in row["metric_by_group"].items())
        print(f"  {label:<40} exact match {row['metric']:.3f}  keep {row['keep_ratio']:.3f}  {kinds}", flush=True)
        return row


def by_attribute(records: list[dict], samples, attribute: Callable[[str], str]) -> dict:
    """{value: {rows, exact match, kept tokens}} over `records` (an arm's per-sample results), by `attribute` of each
    row's first reference answer, in sorted order of the values."""
    answers = {sample["source_row"]: sample["answer"][0] for sample in samples}  # an eval row's answers: a list
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(attribute(answers[record["row"]]), []).append(record)
    return {
        value: {
            "rows": len(group),
            "metric": sum(r["score"] for r in group) / len(group),
            "kept_tokens": sum(r["kept_tokens"] for r in group) / len(group),
        }
        for value, group in sorted(groups.items())
    }


def evaluate(task: TaskSpec, work: Path, runs: dict, args) -> tuple[list[dict], dict]:
    """Every arm of the task's table on its test split; returns (rows, run summary)."""
    from glimpserl.models import glimpse_module
    from glimpserl.rl.eval.arms import PrunerSetup, pruner_setup
    from glimpserl.rl.eval.compare import load_eval_model
    from glimpserl.rl.eval.glimpse import calibrate_threshold

    box, kl, plus = work / "vip-box", work / "vip-kl", work / "grpo"
    settings = _settings(box, "test", args.eval_rows, args.batch_size)
    evaluator = Evaluator(settings, _samples(settings))
    deploy = runs["vip-box"]["calibration"]
    val = validation_samples(box, deploy, args.batch_size)
    model, processor = load_eval_model(settings)
    k = glimpse_module(model).config.layer
    layers = getattr(model.config, "text_config", model.config).num_hidden_layers
    summary = {"layer": k, "num_layers": layers, "deploy": deploy, "test_rows": len(evaluator.samples)}
    summary.update(val_rows=len(val), question_only_prior=_prior(box, evaluator.samples))

    evaluator.run(model, processor, PrunerSetup("none", {"glimpse_mode": "off"}), "unpruned", "unpruned", "-")
    glimpse = evaluator.run(model, processor, PrunerSetup("glimpse"), "GlimpsePrune", "glimpse", str(k))
    ratio = glimpse["keep_ratio"]
    for factor in GLIMPSE_POINTS:
        target = min(1.0, factor * deploy["target_keep_ratio"])
        point = calibrate_threshold(model, processor, val, target, batch_size=args.batch_size)
        label = f"GlimpsePrune @ val keep {target:.3f}"
        evaluator.run(model, processor, PrunerSetup("glimpse"), label, "glimpse", str(k), point["threshold"])
    for keep in (ratio, *OTHER_RATIOS):
        for name in (*SELECTORS, "downsample"):
            arm = pruner_setup(name, keep, seed=0)
            layer = "-" if name == "downsample" else str(k)
            evaluator.run(model, processor, arm, f"{name} (layer {layer})", name, layer)
            if name in NATIVE:
                spec = f"{name}@{NATIVE[name]}"
                evaluator.run(model, processor, pruner_setup(spec, keep, seed=0), spec, name, NATIVE[name])
    plus_model = load_eval_model(_run_settings(plus, args.batch_size, args.eval_rows))
    seeded = {
        seed: load_eval_model(_run_settings(work / f"grpo-seed{seed}", args.batch_size, args.eval_rows))
        for seed in task.plus_seeds
    }
    # Stage 1 at GlimpsePrune+'s budget: the threshold whose validation keep equals GlimpsePrune+'s validation keep.
    summary["plus_val_keep"] = validation_keep(*plus_model, val, args.batch_size)
    point = calibrate_threshold(model, processor, val, summary["plus_val_keep"], batch_size=args.batch_size)
    label = f"{AT_PLUS} {summary['plus_val_keep']:.3f}"
    evaluator.run(model, processor, PrunerSetup("glimpse"), label, "glimpse", str(k), point["threshold"])
    if task.one_region:
        summary["one_region"] = one_region(
            model, processor, evaluator, task.one_region, str(k), plus_model, seeded, task.one_region_attribute
        )
        summary["one_region"]["region_share"] = task.region_share
    model, processor = load_eval_model(_settings(kl, "test", args.eval_rows, args.batch_size))
    evaluator.run(model, processor, PrunerSetup("glimpse"), "GlimpsePrune (KL only)", "glimpse-kl", str(k))
    if task.bias_contrast:
        model, processor = load_eval_model(_settings(work / "vip-kl-bias", "test", args.eval_rows, args.batch_size))
        label = "GlimpsePrune (KL only, gradient through the additive bias)"
        evaluator.run(model, processor, PrunerSetup("glimpse"), label, "glimpse-kl-bias", str(k))
    plus_row = evaluator.run(*plus_model, PrunerSetup("glimpse"), "GlimpsePrune+", "glimpse-plus", str(k))
    evaluator.run(*plus_model, PrunerSetup("glimpse"), PLUS_MODE, "glimpse-plus-mode", str(k), MODE_THRESHOLD)
    for seed, runs_on in seeded.items():
        evaluator.run(*runs_on, PrunerSetup("glimpse"), plus_seed_label(seed), "glimpse-plus-seed", str(k))
    for layer in sweep_layers(task, k, args.quick):
        if layer == k:  # the deployed runs, measured above on the same rows: their rows again, under the sweep's name
            for row, name, family in (
                (glimpse, "GlimpsePrune", "glimpse-k"),
                (plus_row, "GlimpsePrune+", "glimpse-plus-k"),
            ):
                evaluator.results.append({**row, "label": f"{name}, K = {layer}", "family": family})
            continue
        model, processor = load_eval_model(
            _settings(work / f"vip-box-k{layer}", "test", args.eval_rows, args.batch_size)
        )
        label = f"GlimpsePrune, K = {layer}"
        evaluator.run(model, processor, PrunerSetup("glimpse"), label, "glimpse-k", str(layer))
        model, processor = load_eval_model(_run_settings(work / f"grpo-k{layer}", args.batch_size, args.eval_rows))
        evaluator.run(
            model, processor, PrunerSetup("glimpse"), f"GlimpsePrune+, K = {layer}", "glimpse-plus-k", str(layer)
        )
    reference = evaluator.results[0]["prefill_ms"]
    for row in evaluator.results:
        row["prefill_ratio"] = row["prefill_ms"] / reference
        if row["family"] in ("glimpse-k", "glimpse-plus-k"):
            row["prefill_bound"] = (int(row["layer"]) + 1) / layers
    return evaluator.results, summary


def one_region(
    model,
    processor,
    evaluator: Evaluator,
    kinds: tuple[str, ...],
    layer: str,
    plus,
    seeds: dict | None = None,
    attribute: Callable[[str], str] | None = None,
) -> dict:
    """The one-region rows alone: unpruned, GlimpsePrune, then every training-free pruner at layer K and at the
    glimpse's mean keep ratio on these rows (the fixed budget a dynamic method spent on them); then the same for
    GlimpsePrune+ (`plus`: its model and processor) at its inherited threshold and at MODE_THRESHOLD, the pruners on
    the base model at its keep. Each pruner row names the glimpse it is compared with (`versus`). Last, GlimpsePrune+
    at each further stage-2 seed (`seeds`: seed -> model and processor), alone. With an `attribute`, every row is also
    broken down by it (`Evaluator`)."""
    from glimpserl.rl.eval.arms import GROUP_COLUMN, PrunerSetup, pruner_setup

    samples = [row for row in evaluator.samples if row.get(GROUP_COLUMN) in kinds]
    if not samples:
        raise RuntimeError(f"the test split has no rows of kind {', '.join(kinds)} for the one-region comparison")
    sub = Evaluator(evaluator.settings, samples, attribute)
    print(f"one-region questions ({', '.join(kinds)}: {len(samples)} rows)", flush=True)
    sub.run(model, processor, PrunerSetup("none", {"glimpse_mode": "off"}), "unpruned", "unpruned", "-")
    for glimpse, family, runs_on, threshold in (
        ("GlimpsePrune", "glimpse", (model, processor), None),
        ("GlimpsePrune+", "glimpse-plus", plus, None),
        (PLUS_MODE, "glimpse-plus-mode", plus, MODE_THRESHOLD),
    ):
        keep = sub.run(*runs_on, PrunerSetup("glimpse"), glimpse, family, layer, threshold)["keep_ratio"]
        suffix = "" if glimpse == "GlimpsePrune" else f" at {glimpse}'s keep"
        for name in (*SELECTORS, "downsample"):
            at = "-" if name == "downsample" else layer
            row = sub.run(model, processor, pruner_setup(name, keep, seed=0), f"{name} (layer {at}){suffix}", name, at)
            row["versus"] = glimpse
    for seed, runs_on in (seeds or {}).items():
        sub.run(*runs_on, PrunerSetup("glimpse"), plus_seed_label(seed), "glimpse-plus-seed", layer)
    part = {"kinds": list(kinds), "rows": sub.results}
    if attribute is not None:
        part["attribute"] = attribute.__name__.replace("_", " ")
    return part


def _run_settings(run: Path, batch_size: int, rows: int | None):
    from glimpserl.rl.eval.compare import resolve_settings
    from glimpserl.rl.eval.settings import EvalSettings

    return resolve_settings(EvalSettings(run_dir=str(run), pruners="glimpse", batch_size=batch_size, max_samples=rows))


def recipe_layer(recipe: Path) -> int:
    """The glimpse layer K a stage-1 recipe sets."""
    import yaml

    return int(yaml.safe_load(recipe.read_text())["glimpse_layer"])


def sweep_layers(task: TaskSpec, k: int, quick: bool) -> tuple[int, ...]:
    """The layers of the K sweep (the quick run: the deployed K and the earliest other one)."""
    if quick and task.layers:
        return tuple(sorted({k, min(task.layers)}))
    return task.layers


def portable(report: dict, work: Path) -> dict:
    """The report with this machine's folders written as the work dir's run names and `$GLIMPSERL_CACHE/`."""
    from glimpserl.models.loading import cache_dir

    text = json.dumps(report)
    for folder, name in ((work.resolve(), ""), (work, ""), (cache_dir().resolve(), "$GLIMPSERL_CACHE/")):
        text = text.replace(str(folder) + "/", name)
    return json.loads(text)


def training_jobs(task: TaskSpec, vip: Path, grpo: Path, quick: bool) -> list[TrainJob]:
    """The task's training runs: stage 1 box-supervised and KL-only (and the additive-bias contrast), stage 2 from the
    box-supervised glimpse (at the recipe's seed, then at each of the task's further seeds), then the K sweep's pairs.
    Stage-1 runs come first, so the stage-2 runs (which wait for theirs) fill the slots last."""
    k = recipe_layer(vip)
    others = [layer for layer in sweep_layers(task, k, quick) if layer != k]
    stage1 = [TrainJob("vip-box", vip)]
    stage1 += [TrainJob(f"vip-box-k{layer}", vip, ("--glimpse_layer", str(layer))) for layer in others]
    stage1.append(TrainJob("vip-kl", vip, ("--box_weight", "0")))
    if task.bias_contrast:  # the estimator that gives a dropped token no gradient (docs/method.md section 2.1)
        stage1.append(TrainJob("vip-kl-bias", vip, tuple(BIAS_ONLY)))
    stage2 = [TrainJob("grpo", grpo, after="vip-box")]
    stage2 += [TrainJob(f"grpo-seed{seed}", grpo, ("--seed", str(seed)), after="vip-box") for seed in task.plus_seeds]
    stage2 += [TrainJob(f"grpo-k{layer}", grpo, after=f"vip-box-k{layer}") for layer in others]
    return stage1 + stage2


def reproduce(name: str, task: TaskSpec, work: Path, args) -> dict:
    """Train the task's stages (and the K sweep), evaluate every arm; the task's report."""
    started = time.perf_counter()
    vip, grpo = task.recipes / "vip.yaml", task.recipes / "grpo.yaml"
    runs = train_all(training_jobs(task, vip, grpo, args.quick), work, args)
    rows, summary = evaluate(task, work, runs, args)
    return {
        "task": name,
        "wall_seconds": time.perf_counter() - started,
        "training": {run: {key: v for key, v in result.items() if key != "eval"} for run, result in runs.items()},
        "stage1_eval": {run: result.get("eval") for run, result in runs.items() if run.startswith("vip")},
        **summary,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick and args.eval_rows is None:
        args.eval_rows = 16
    work, out_dir = Path(args.work_dir), Path(args.out_dir)
    started = time.perf_counter()
    names = list(TASKS) if args.task == "all" else [args.task]
    tasks = {name: portable(reproduce(name, TASKS[name], work / name, args), work / name) for name in names}
    report = {
        "command": "python -m glimpserl.benchmarks.fidelity " + " ".join(argv if argv is not None else sys.argv[1:]),
        "threads": torch.get_num_threads(),
        "training_threads": TRAIN_THREADS,
        "jobs": args.jobs,
        "wall_seconds": time.perf_counter() - started,
        "tasks": tasks,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "fidelity-quick" if args.quick else "fidelity"
    if args.task != "all":
        stem += f"-{args.task}"
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown_report(report)
    (out_dir / f"{stem}.md").write_text(table + "\n")
    plot(report, out_dir / f"{stem}.png")
    print(table)
    for name, task in tasks.items():
        print(f"--- {name}")
        print("\n".join(summary_lines(task)))
    print(f"wall time of the whole reproduction: {report['wall_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
