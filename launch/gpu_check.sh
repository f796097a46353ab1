#!/usr/bin/env bash
# The GPU check: one command that runs tests/gpu and the speed comparisons on this machine and
# writes DIR/gpu_check.json, DIR/gpu_check.txt (the table), DIR/gpu_check.log (every step's
# output) and DIR/gpu_check_tests.xml. Exit 0 only when every test and every step passed.
#
#   launch/gpu_check.sh --out /tmp/check --wheels .whl    # on one H100/H200, ~8 minutes
#   launch/gpu_check.sh --cpu --out /tmp/check            # the same steps, tiny, on the CPU (~4 min)
#
# Nothing is installed from the network. --wheels DIR pip-installs DIR/*.whl offline into a
# temporary folder put on PYTHONPATH: the GPU machine lacks `datasets` (which every training run
# imports) and its dill and multiprocess; see README for making that folder. The checkout runs as
# it is (no `pip install -e .`). PYTHON picks the interpreter (default: the project's .venv, else
# python3). The steps are in launch/gpu_check.py.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3 || command -v python)"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$py" "$here/launch/gpu_check.py" "$@"
