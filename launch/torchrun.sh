#!/usr/bin/env bash
# Train with torchrun instead of `accelerate launch`, for clusters whose jobs start through
# torchrun's conventions (Kubeflow PyTorchJob, torchx, a site wrapper that sets MASTER_ADDR ...).
# Run it once on every node, with that node's NODE_RANK:
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 \
#     launch/torchrun.sh --config resnet50-two-phase data.root=/data/veg output_dir=runs/veg
#   # one machine, all its GPUs:
#   launch/torchrun.sh data.root=/data/veg output_dir=runs/veg
#
# Environment (all optional):
#   NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500)
#   NPROC_PER_NODE  processes per node (default: the GPUs torch sees; 2 CPU processes over gloo
#                   when there is none)
#   PYTHON          interpreter (default: the project's .venv, else python3)
# No accelerate config file is read here: pick mixed precision with train.mixed_precision=bf16.
# Stopping with a checkpoint: send SIGUSR1 (or SIGTERM) to the ranks, the children of the torchrun
# process (`pkill -USR1 -P TORCHRUN_PID`), not to torchrun itself: like `accelerate launch`, it
# does not forward SIGUSR1 and dies of it. Under Slurm, use launch/slurm/*.sbatch with
# LAUNCHER=torchrun instead: they do this for you.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3 || command -v python)"
nproc="${NPROC_PER_NODE:-$("$py" -c 'import torch; print(torch.cuda.device_count() or 2)')}"
exec "$py" -m torch.distributed.run \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$nproc" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  "$here/train.py" "$@"
