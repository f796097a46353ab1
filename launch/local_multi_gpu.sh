#!/usr/bin/env bash
# Train on every GPU of this machine: counts them and starts one process per GPU.
#   launch/local_multi_gpu.sh --config resnet50-two-phase data.root=/data/veg output_dir=runs/veg
# Uses the project's .venv when there is one, else `python` from PATH (or set PYTHON).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3 || command -v python)"
ngpu="$("$py" -c 'import torch; print(torch.cuda.device_count())')"
if [ "$ngpu" -lt 1 ]; then
  echo "no CUDA GPU found; for 2 CPU processes use: accelerate launch --config_file $here/accelerate_configs/cpu.yaml $here/train.py ..." >&2
  exit 2
fi
exec "$py" -m accelerate.commands.launch --config_file "$here/accelerate_configs/multi_gpu.yaml" \
  --num_processes "$ngpu" "$here/train.py" "$@"
