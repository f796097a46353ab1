"""`trainer <args>` with test instrumentation switched on by environment variables:

SAMPLE_LOG=FILE          append {"epoch", "row", "rank"} for every training sample loaded
CRASH_SAVING_STEP=N      SIGKILL this process right after checkpoint N's weights are written
FORGET_POSITION=1        resume at the start of the interrupted epoch (a negative control)
"""

from __future__ import annotations

import json
import os
import signal
import sys

from trainer.cli import command
from trainer.cli.args import collector_paused

with collector_paused():  # as `trainer train` imports them
    from trainer.data import sampling
    from trainer.train import checkpoint, setup

if os.environ.get("SAMPLE_LOG"):
    original_getitems = sampling.SeededView.__getitems__

    def logged(self, keys):
        with open(os.environ["SAMPLE_LOG"], "a", encoding="utf-8") as f:
            for row, epoch in keys:
                f.write(
                    json.dumps({"epoch": epoch, "row": row, "rank": os.environ.get("RANK", "0")})
                    + "\n"
                )
        return original_getitems(self, keys)

    sampling.SeededView.__getitems__ = logged

if os.environ.get("CRASH_SAVING_STEP"):
    original_write = checkpoint._write  # every file the main process writes into a checkpoint
    doomed = f"step-{int(os.environ['CRASH_SAVING_STEP']):08d}.tmp"

    def write_then_die(path, write):
        sha = original_write(path, write)
        if doomed in str(path) and path.name == "model.safetensors":
            os.kill(os.getpid(), signal.SIGKILL)
        return sha

    checkpoint._write = write_then_die

if os.environ.get("FORGET_POSITION"):
    original_prepare = setup.prepare_run_dir

    def forgetful(cfg, accelerator):
        run_dir, resumed = original_prepare(cfg, accelerator)
        if resumed is not None:
            resumed.position.batch = 0
        return run_dir, resumed

    setup.prepare_run_dir = forgetful

if __name__ == "__main__":
    sys.exit(command(sys.argv[1:]))
