#!/usr/bin/env bash
# Train on every GPU of this machine: counts them and starts one process per GPU.
#   launch/local_multi_gpu.sh --config resnet50-two-phase data.root=/data/veg output_dir=runs/veg
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
ngpu="$(python -c 'import torch; print(torch.cuda.device_count())')"
if [ "$ngpu" -lt 1 ]; then
  echo "no CUDA GPU found; for CPU use: accelerate launch --config_file $here/accelerate_configs/cpu.yaml $here/train.py ..." >&2
  exit 2
fi
exec accelerate launch --config_file "$here/accelerate_configs/multi_gpu.yaml" --num_processes "$ngpu" "$here/train.py" "$@"
