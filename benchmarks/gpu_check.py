"""The GPU check: the efficiency table at the published Qwen2.5-VL-7B shape, one command, one markdown + JSON table.

It runs benchmarks.scaling (and benchmarks.grpo_step) on the published Qwen2.5-VL shapes of benchmarks/shapes.py,
the paper's efficiency setting, with random weights built on the GPU in bf16 (timing and memory do not depend on the
weights); the Qwen3-VL-8B and LLaVA-1.5-7B presets run through the same benchmarks by --shape (README).

    python -m glimpserl.benchmarks.gpu_check --out outputs/gpu_check          # on a GPU (benchmarks/gpu_check.sh)
    python -m glimpserl.benchmarks.gpu_check --out /tmp/check --tiny          # the same wiring on a CPU, tiny shape

Parts (each written as soon as it is done, so a run stopped by a time limit keeps what it finished):
1. single image: the 7B shape at about 1k, 2.5k and 5k visual tokens (the paper's DocVQA setting is ~5,074): the
   unpruned model against the glimpse at keep 7.4% (the paper's 92.6% pruned) and every training-free pruner the
   family feeds at the same keep; prefill (time to first token) and decode per token apart, KV length after
   prefill, peak memory (`max_memory_allocated`, reset per arm), and the analytic FLOPs bound beside the measured
   ratio;
2. several images: four images of ~1.25k visual tokens each in one prompt, the same arms (the memory a prompt with
   many images needs, pruned against unpruned);
3. one GRPO step at the 3B shape: LoRA, 4 generations of 128 tokens, plain `trl.GRPOTrainer` against glimpserl at
   keep 10%, with the split of the step and the bound per phase; only where `trl` imports (it is not on every GPU
   machine; the part is then reported as skipped);
4. one stage-1 step at the 3B shape (batch 4 of ~1k visual tokens): the VIP trainer's loss + backward with the
   teacher inside the student's forward, the same with a separate teacher forward, and one plain forward + backward
   of every parameter (an SFT step of the same batch); where `trl` imports, as part 3.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

PRUNERS = "glimpse,gprune,fastv,divprune,cdpruner,random"
NEEDS_TRL = ("grpo", "stage1")
"""Parts that run a glimpserl trainer (TRL subclasses): skipped where trl does not import."""
PAPER_KEEP = 0.074
"""The paper's average keep on its free-form VQA benchmarks (92.6% of the visual tokens pruned)."""
GPU = dict(
    shape=["--shape", "qwen2_5_vl_7b", "--dtype", "bfloat16", "--attn", "sdpa", "--device", "cuda"],
    sizes="1024,2500,5074",
    multi=["--visual-tokens", "1250", "--images", "4"],
    grpo=["--shape", "qwen2_5_vl_3b", "--dtype", "bfloat16", "--device", "cuda", "--visual-tokens", "1024"],
    stage1=["--shape", "qwen2_5_vl_3b", "--dtype", "bfloat16", "--device", "cuda", "--visual-tokens", "1024"],
    repeats="3",
    new_tokens="32",
)
TINY = dict(
    shape=["--hidden", "64", "--layers", "4", "--heads", "4", "--vision-layers", "2", "--vision-hidden", "32"]
    + ["--device", "cpu", "--threads", "1"],
    sizes="16",
    multi=["--visual-tokens", "16", "--images", "2"],
    grpo=["--hidden", "64", "--layers", "4", "--heads", "4", "--vision-layers", "2", "--vision-hidden", "32"]
    + ["--device", "cpu", "--threads", "1", "--visual-tokens", "16", "--vocab", "2048", "--completion-tokens", "8"],
    stage1=["--hidden", "64", "--layers", "4", "--heads", "4", "--vision-layers", "2", "--vision-hidden", "32"]
    + ["--device", "cpu", "--threads", "1", "--visual-tokens", "16", "--vocab", "2048", "--batch", "2"],
    repeats="1",
    new_tokens="4",
)


def _scaling(argv: list[str]) -> dict:
    from glimpserl.benchmarks import scaling
    from glimpserl.benchmarks.arguments import add_bench_arguments

    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    return scaling.run(args)


def _grpo(argv: list[str]) -> dict:
    from glimpserl.benchmarks import grpo_step

    return grpo_step.run(grpo_step.parse_args(argv))


def _stage1(argv: list[str]) -> dict:
    from glimpserl.benchmarks import stage1_step

    return stage1_step.run(stage1_step.parse_args(argv))


def run(out: Path, tiny: bool = False) -> dict:
    """Every part in turn; `out`/gpu_check.{json,md} rewritten after each."""
    plan = TINY if tiny else GPU
    common = ["--keep-ratio", str(PAPER_KEEP), "--pruners", PRUNERS, "--repeats", plan["repeats"]]
    common += ["--new-tokens", plan["new_tokens"], "--no-plot", *plan["shape"]]
    results: dict = {"tiny": tiny, "parts": {}, "seconds": {}}
    parts = {
        "single": lambda: _scaling(["--visual-tokens", plan["sizes"], *common]),
        "multi_image": lambda: _scaling([*common, *plan["multi"]]),
        "grpo": lambda: _grpo([*plan["grpo"], "--generations", "4", "--steps", "2", "--rounds", "1"]),
        "stage1": lambda: _stage1([*plan["stage1"], "--repeats", plan["repeats"]]),
    }
    for name, part in parts.items():
        start = time.perf_counter()
        print(f"gpu_check: {name}", file=sys.stderr, flush=True)
        if name in NEEDS_TRL and importlib.util.find_spec("trl") is None:
            results["parts"][name] = {"skipped": "trl does not import on this machine"}
        else:
            results["parts"][name] = part()
        results["seconds"][name] = round(time.perf_counter() - start, 1)
        write(results, out)
    return results


def markdown(results: dict) -> str:
    from glimpserl.benchmarks import grpo_step, scaling, stage1_step

    lines = ["# GPU check", ""]
    for name, title in (("single", "One image"), ("multi_image", "Several images in one prompt")):
        if name in results["parts"]:
            lines += [f"## {title}", "", scaling.markdown_table(results["parts"][name]), ""]
    for name, title, report in (
        ("grpo", "One GRPO step", grpo_step.markdown_report),
        ("stage1", "One stage-1 step", stage1_step.markdown_report),
    ):
        part = results["parts"].get(name)
        if part is not None:
            lines += [f"## {title}", "", part["skipped"] if "skipped" in part else report(part), ""]
    lines.append("Seconds per part: " + ", ".join(f"{k} {v}" for k, v in results["seconds"].items()) + ".")
    return "\n".join(lines)


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2))
    (out / "gpu_check.md").write_text(markdown(results) + "\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m glimpserl.benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/gpu_check", help="Folder for gpu_check.json and gpu_check.md.")
    p.add_argument("--tiny", action="store_true", help="A tiny shape on the CPU: checks the wiring in a minute.")
    args = p.parse_args(argv)
    results = run(Path(args.out), args.tiny)
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
