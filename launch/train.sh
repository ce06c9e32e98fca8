#!/usr/bin/env bash
# Thin launcher: glimpserl train under accelerate with one of the configs in this folder.
#   launch/train.sh LAUNCH_CONFIG RECIPE.yaml [--key value ...]
# e.g. launch/train.sh launch/zero3.yaml recipes/qwen2_5_vl_7b/vip.yaml --output_dir runs/vip7b
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 LAUNCH_CONFIG RECIPE.yaml [--key value ...]" >&2
  exit 2
fi
config=$1; recipe=$2; shift 2
exec accelerate launch --config_file "$config" -m glimpserl.cli train "$recipe" "$@"
