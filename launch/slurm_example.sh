#!/usr/bin/env bash
# Multi-node ZeRO-3 with SLURM: one task per node, each starting accelerate for its 8 GPUs.
#SBATCH --job-name=glimpserl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
set -euo pipefail
RECIPE=${RECIPE:-recipes/qwen2_5_vl_7b/vip.yaml}
MAIN_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun bash -c "accelerate launch --config_file launch/multinode_zero3.yaml \
  --num_machines $SLURM_NNODES --num_processes $((SLURM_NNODES * 8)) \
  --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_IP --main_process_port 29500 \
  -m glimpserl.cli train $RECIPE $*"
