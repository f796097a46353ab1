#!/usr/bin/env bash
# One node's part of a Slurm training job: builds this node's `accelerate launch` command from
# the SLURM_* variables and the settings below, runs it, and passes stop signals on to the
# training processes (the ranks).
#
#   launch/slurm/node_command.sh [--print] [KEY=VALUE overrides for train.py ...]
#
# train_single_node.sbatch execs it; train_multi_node.sbatch runs it as one srun task per node,
# so that SLURM_NODEID is each node's own. --print writes the command this node would run (one
# shell-quoted line, environment assignments first) and exits; it needs no Slurm, e.g.
#   SLURM_JOB_ID=42 SLURM_NNODES=2 SLURM_NODEID=1 SLURM_JOB_NODELIST='gpu[07-08]' \
#     PROCS_PER_NODE=8 launch/slurm/node_command.sh --print data.root=/data/veg
#
# Settings (environment variables; all optional):
#   PROJECT_DIR        the checkout holding train.py; relative paths are relative to it
#                      (default: the folder two levels above this script)
#   VENV               virtual environment whose python runs everything
#                      (default: $PROJECT_DIR/.venv when it exists, else python3 from PATH)
#   OUTPUT_DIR         run folder (default: runs/slurm-JOBID, JOBID_TASK for array jobs); an
#                      output_dir=... argument wins. An unfinished run in it is continued
#                      (checkpoint.resume=auto).
#   CONFIG             recipe name or YAML file, passed as --config
#   TRAINER_PROFILE    gpu (default) or cpu: 2 CPU processes per node over gloo
#                      (accelerate_configs/cpu.yaml with ACCELERATE_USE_CPU=1), for trying things out
#   ACCELERATE_CONFIG  accelerate config file (default: accelerate_configs/multi_gpu.yaml on one
#                      node, multi_node.yaml on several, cpu.yaml for TRAINER_PROFILE=cpu)
#   PROCS_PER_NODE     processes per node (default: SLURM_GPUS_ON_NODE, else the GPUs in
#                      CUDA_VISIBLE_DEVICES or listed by nvidia-smi; 2 for TRAINER_PROFILE=cpu)
#   MAIN_PROCESS_PORT  rendezvous port on the first node (default: 20000 + job id % 20000)
#   LAUNCHER           accelerate (default) or torchrun: `python -m torch.distributed.run
#                      --nnodes --node_rank --nproc_per_node --master_addr --master_port`, for
#                      sites that standardize on torchrun; no accelerate config is read then
#                      (mixed precision: train.mixed_precision=bf16)
#
# Signals: SIGUSR1 or SIGTERM to this script is sent on to every rank (the children of the
# launcher), which save a checkpoint at the next step boundary and exit 75; the main rank then
# runs `scontrol requeue` (checkpoint.requeue=true). The launcher itself ignores SIGUSR1 (torch's
# launcher does not forward it, and it would kill the launcher), so a USR1 sent to every process
# of the job (scancel --full, srun's forwarding) reaches the ranks and leaves the launcher alone.
# Exit status: 75 (EX_TEMPFAIL, "try again") when a stop signal came, the launcher failed and the
# run folder holds a complete checkpoint and no summary.json: the ranks saved and exited 75, the
# launcher reported "exitcode : 75" for the first of them (it may stop the others before they
# report) and exited 1, and the same command continues the run. Otherwise the launcher's exit status (0: the run finished).
set -euo pipefail

print_only=0
if [ "${1:-}" = "--print" ]; then
  print_only=1
  shift
fi

die() { echo "node_command.sh: $*" >&2; exit 2; }

PROJECT_DIR="${PROJECT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
[ -f "$PROJECT_DIR/train.py" ] || die "PROJECT_DIR=$PROJECT_DIR holds no train.py; set PROJECT_DIR to the trainer checkout"
cd "$PROJECT_DIR"

VENV="${VENV:-$PROJECT_DIR/.venv}"
if [ -x "$VENV/bin/python" ] || [ -x "$VENV/bin/python3" ]; then
  python="$VENV/bin/python"
  [ -x "$python" ] || python="$VENV/bin/python3"
  export VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH"
else
  python="$(command -v python3 || command -v python)" || die "no python: set VENV"
fi

job_id="${SLURM_JOB_ID:-0}"
if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  job_id="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
OUTPUT_DIR="${OUTPUT_DIR:-runs/slurm-$job_id}"

# The first host of a Slurm node list: scontrol knows every form; without it (rendering on a
# laptop), expand the first entry of "name", "a,b" or "gpu[07-08,11],cpu1" forms ourselves.
first_host() {
  local list=$1 first
  if command -v scontrol >/dev/null && first=$(scontrol show hostnames "$list" 2>/dev/null | head -n 1) && [ -n "$first" ]; then
    echo "$first"
    return
  fi
  # Cut at the first comma outside brackets, then take the first number of each [...] range.
  first=$(awk -v s="$list" 'BEGIN {
    depth = 0; out = ""
    for (i = 1; i <= length(s); i++) {
      c = substr(s, i, 1)
      if (c == "[") { depth++; skip = 0; continue }
      if (c == "]") { depth--; skip = 0; continue }
      if (depth == 0 && c == ",") break
      if (depth > 0) { if (c == "," || c == "-") skip = 1; if (!skip) out = out c; continue }
      out = out c
    }
    print out }')
  echo "$first"
}

num_machines="${SLURM_NNODES:-1}"
machine_rank="${SLURM_NODEID:-0}"
if [ "$num_machines" -gt 1 ]; then
  [ -n "${SLURM_JOB_NODELIST:-}" ] || die "SLURM_JOB_NODELIST is not set: run inside a Slurm job (or set it to render)"
  main_ip="$(first_host "$SLURM_JOB_NODELIST")"
else
  main_ip=127.0.0.1
fi
port="${MAIN_PROCESS_PORT:-$((20000 + ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-0}} % 20000))}"

profile="${TRAINER_PROFILE:-gpu}"
case "$(basename "${ACCELERATE_CONFIG:-}")" in cpu.yaml) profile=cpu ;; esac
case "$profile" in
  cpu)
    ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-accelerate_configs/cpu.yaml}"
    procs="${PROCS_PER_NODE:-2}"
    export ACCELERATE_USE_CPU=1
    ;;
  gpu)
    if [ "$num_machines" -gt 1 ]; then
      ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-accelerate_configs/multi_node.yaml}"
    else
      ACCELERATE_CONFIG="${ACCELERATE_CONFIG:-accelerate_configs/multi_gpu.yaml}"
    fi
    procs="${PROCS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}"
    if [ -z "$procs" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
      procs=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
    fi
    if [ -z "$procs" ] && command -v nvidia-smi >/dev/null; then
      procs=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
    if [ -z "$procs" ] || [ "$procs" -lt 1 ]; then
      die "no GPU on $(hostname): ask Slurm for GPUs (--gpus-per-node=N or --gres=gpu:N), set PROCS_PER_NODE, or use TRAINER_PROFILE=cpu"
    fi
    ;;
  *) die "TRAINER_PROFILE=$profile: expected gpu or cpu" ;;
esac
[ -f "$ACCELERATE_CONFIG" ] || die "ACCELERATE_CONFIG=$ACCELERATE_CONFIG: no such file (relative to $PROJECT_DIR)"

case "${LAUNCHER:-accelerate}" in
  accelerate)
    cmd=(
      "$python" -m accelerate.commands.launch
      --config_file "$ACCELERATE_CONFIG"
      --num_machines "$num_machines"
      --machine_rank "$machine_rank"
      --main_process_ip "$main_ip"
      --main_process_port "$port"
      --num_processes "$((procs * num_machines))"
      train.py
    )
    ;;
  torchrun)
    cmd=(
      "$python" -m torch.distributed.run
      --nnodes "$num_machines"
      --node_rank "$machine_rank"
      --nproc_per_node "$procs"
      --master_addr "$main_ip"
      --master_port "$port"
      train.py
    )
    ;;
  *) die "LAUNCHER=$LAUNCHER: expected accelerate or torchrun" ;;
esac
[ -n "${CONFIG:-}" ] && cmd+=(--config "$CONFIG")
cmd+=("$@")
# An output_dir=... among the arguments wins over OUTPUT_DIR.
given_dir=
for arg in "$@"; do
  case "$arg" in output_dir=*) given_dir="${arg#output_dir=}" ;; esac
done
if [ -n "$given_dir" ]; then
  OUTPUT_DIR="$given_dir"
else
  cmd+=("output_dir=$OUTPUT_DIR")
fi

if [ "$print_only" = 1 ]; then
  [ "$profile" = cpu ] && printf 'ACCELERATE_USE_CPU=1 '
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi

echo "[node_command] $(hostname): machine $machine_rank of $num_machines, $procs processes here," \
  "main $main_ip:$port, run folder $OUTPUT_DIR (restart ${SLURM_RESTART_COUNT:-0})" >&2

# Forward a stop signal to the ranks: the launcher's children (torch elastic starts each rank in
# a session of its own, so this is by parent, not by process group). DataLoader workers are the
# ranks' children and ignore it.
launcher=
interrupted=0
stop_signal=
# shellcheck disable=SC2329  # called by the traps below
forward() {
  interrupted=1
  stop_signal="${stop_signal:-$1}"
  [ -n "$launcher" ] || return 0
  echo "[node_command] $(hostname): got SIG$1, sending it to the ranks of launcher $launcher" >&2
  if command -v pkill >/dev/null; then
    pkill "-$1" -P "$launcher" || true
  else
    local child
    # shellcheck disable=SC2013  # one pid per word
    for child in $(cat /proc/"$launcher"/task/*/children 2>/dev/null); do
      kill "-$1" "$child" 2>/dev/null || true
    done
  fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# In the background so that the traps run while it works (bash runs a trap only between
# commands, or when `wait` is interrupted). The subshell ignores USR1, and exec keeps that for
# the launcher; the ranks install their own handler when training starts.
( trap '' USR1; exec "${cmd[@]}" ) &
launcher=$!
while :; do
  interrupted=0
  status=0
  wait "$launcher" || status=$?
  # A trapped signal ends `wait` early (status > 128): wait again until the launcher is done.
  [ "$interrupted" = 1 ] || break
done
echo "[node_command] $(hostname): launcher exited with $status" >&2
# Stopped by our signal, not finished, with a checkpoint to continue from: say so with 75
# (EX_TEMPFAIL) instead of the launcher's 1. (A requeued job is usually killed by Slurm first.)
if [ "$status" != 0 ] && [ -n "$stop_signal" ] && [ ! -e "$OUTPUT_DIR/summary.json" ] \
  && compgen -G "$OUTPUT_DIR/checkpoints/step-*/COMPLETE" >/dev/null; then
  echo "[node_command] $(hostname): stopped by SIG$stop_signal with a checkpoint in" \
    "$OUTPUT_DIR/checkpoints: exit 75; the same command continues the run" >&2
  status=75
fi
exit "$status"
