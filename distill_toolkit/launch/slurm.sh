#!/bin/bash
# Run `accelerate launch` once on every node of a SLURM allocation.
#   sbatch launch/slurm.sh CONFIG.yaml [LAUNCH_FILE]        (LAUNCH_FILE defaults to launch/multi_node.yaml;
#                                                          launch/zero3.yaml or launch/fsdp2.yaml work too)
# Environment: GPUS_PER_NODE (default 8), MAIN_PORT (default 29500), EXTRA_ARGS (more `--set` overrides).
#SBATCH --job-name=distill
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch launch/slurm.sh CONFIG.yaml [LAUNCH_FILE]}
LAUNCH_FILE=${2:-launch/multi_node.yaml}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MAIN_PORT=${MAIN_PORT:-29500}
NNODES=${SLURM_NNODES:?not inside a SLURM allocation}
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
MAIN_ADDR=${NODES[0]}  # the first node hosts rank 0
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

# One task per node; each task knows its node rank as SLURM_NODEID. A failed node ends the job.
srun --kill-on-bad-exit=1 bash -c "accelerate launch --config_file '$LAUNCH_FILE' \
    --num_machines $NNODES --num_processes $((NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID --main_process_ip $MAIN_ADDR --main_process_port $MAIN_PORT \
    --rdzv_backend static --same_network \
    -m distill_toolkit.cli train '$CONFIG' ${EXTRA_ARGS:-}"
