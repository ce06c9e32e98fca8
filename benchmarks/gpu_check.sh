#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu_check.py says what it measures): the Qwen2.5-VL-7B shape at ~1k, ~2.5k
# and ~5k visual tokens and with four images in one prompt, unpruned vs the glimpse at keep 7.4% vs every
# training-free pruner at the same keep, bf16, CUDA events, max_memory_allocated; one GRPO step and one stage-1 step
# at the 3B shape where trl imports. Writes $OUT/gpu_check.md and $OUT/gpu_check.json (default OUT=outputs/gpu_check),
# part by part.
#
#   benchmarks/gpu_check.sh              # on a GPU machine, from the repository root, offline
#   benchmarks/gpu_check.sh --tiny       # the same wiring on a CPU at a tiny shape (a test runs this)
#
# Runs from the checkout as it is (the repository is put on PYTHONPATH as `glimpserl`; nothing is installed). It
# needs torch, transformers 5.24, tokenizers, safetensors, huggingface_hub, accelerate, numpy, pillow, pyyaml and
# tqdm; it imports no trl, datasets, deepspeed, peft or matplotlib (parts 3 and 4 excepted). A machine with an older
# transformers (the lent H200 had 5.17) gets the pinned one from wheels/ beside the checkout, fetched here with
#   pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux_2_28_x86_64 \
#       -d wheels transformers==5.24.0
# (one wheel, ~12 MB; wheels/ is git-ignored, so carry it). Parts 3 and 4 also need trl, peft, datasets, pyarrow,
# pandas, dill, multiprocess and xxhash (~60 MB of wheels): without trl they are reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/gpu_check}"
SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
ln -s "$PWD" "$SITE/glimpserl"
if compgen -G "wheels/*.whl" > /dev/null; then
    python -m pip install --quiet --no-index --no-deps --target "$SITE" wheels/*.whl
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m glimpserl.benchmarks.gpu_check --out "$OUT" "$@"
