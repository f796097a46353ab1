"""SIGUSR1/SIGTERM: stop at the next step boundary with a checkpoint, then requeue under Slurm.

The handler only sets a flag. Saving inside a signal handler can deadlock (the handler may run
while the interrupted code holds a lock, or in the middle of a collective); instead every
process checks the flag after each optimizer update, the processes agree (one all-reduce: if
any of them was signalled, all stop at the same step), save, and exit with EXIT_PREEMPTED.
A second signal during the save only sets the flag again.

Only SIGUSR1 requeues a Slurm job: it is the signal the sbatch scripts schedule before the time
limit (--signal=B:USR1@300). SIGTERM (scancel, a node going down) saves and stops; requeueing
then would turn `scancel JOBID` into a restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; a resumed run continues from the checkpoint
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_CODE = {"SIGTERM": 1.0, "SIGUSR1": 2.0}  # agreed by MAX: SIGUSR1 on any rank wins


class Preempted(Exception):
    """Raised on every process after the stop checkpoint is saved."""

    def __init__(self, signal_name: str, checkpoint: str | None):
        super().__init__(f"stopped by {signal_name}; checkpoint {checkpoint}")
        self.signal_name = signal_name
        self.checkpoint = checkpoint


class StopFlag:
    """Set by SIGUSR1/SIGTERM; `agreed()` is the collective check at step boundaries."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name

    @property
    def requeue_wanted(self) -> bool:
        return self.signal_name == "SIGUSR1"

    def agreed(self, accelerator) -> bool:
        """True on every process if any process was signalled (and the same signal_name
        everywhere). Collective when distributed: a one-element all-reduce and a CPU-GPU sync
        point, once per optimizer update."""
        if accelerator.num_processes == 1:
            return self.signal_name is not None
        code = _CODE.get(self.signal_name, 0.0)
        flag = torch.tensor([code], device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        agreed = flag.item()
        if agreed > 0:
            self.signal_name = next(name for name, c in _CODE.items() if c == agreed)
        return agreed > 0


def ignore_in_workers() -> None:
    """DataLoader workers leave SIGUSR1/SIGTERM to their process: Slurm signals every process
    of a job, and a worker killed by it would end the run before the checkpoint."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: ARRAYJOB_TASK for array jobs, else the job id."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(say=print) -> bool:
    """`scontrol requeue` this Slurm job so it starts again and resumes; False if not possible."""
    job = slurm_job_id()
    if job is None:
        return False
    try:
        out = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as e:
        print(f"warning: scontrol requeue {job} failed: {e}", file=sys.stderr)
        return False
    if out.returncode != 0:
        print(
            f"warning: scontrol requeue {job} failed ({out.returncode}): {out.stderr.strip()}",
            file=sys.stderr,
        )
        return False
    say(f"requeued Slurm job {job}: it resumes from the checkpoint when it starts again")
    return True
