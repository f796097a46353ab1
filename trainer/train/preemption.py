"""SIGUSR1/SIGTERM/SIGINT: stop at the next step boundary with a checkpoint, then requeue under
Slurm (SIGUSR1 only).

The handler only sets a flag. Saving inside a signal handler can deadlock (the handler may run
while the interrupted code holds a lock, or in the middle of a collective); instead every
process checks the flag after each optimizer update, the processes agree (one all-reduce: if
any of them was signalled, all stop at the same step), save, and exit with EXIT_PREEMPTED.
A second SIGUSR1/SIGTERM only sets the flag again.

Only SIGUSR1 requeues a Slurm job: it is the signal the sbatch scripts schedule before the time
limit (--signal=B:USR1@300). SIGTERM (scancel, a node going down) saves and stops; requeueing
then would turn `scancel JOBID` into a restart.

Ctrl-C (SIGINT) in training is a stop like SIGTERM: a checkpoint at the next step, exit 75, and
the same command continues. A second Ctrl-C means "out now": before the stop's save has begun it
raises KeyboardInterrupt (the run ends with 130 and continues later from the last complete
checkpoint); once the save has begun (`saving`) it is only answered with "saving the checkpoint,
please wait", so the save always finishes. Checkpoints are written aside and renamed into place,
so even a kill mid-save leaves the last complete one. Outside training (scanning, caching, the
model download) Ctrl-C raises KeyboardInterrupt as usual.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from trainer.data.workers import RUN_SIGNALS

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; a resumed run continues from the checkpoint
_CODE = {"SIGINT": 1.0, "SIGTERM": 2.0, "SIGUSR1": 3.0}  # agreed by MAX: SIGUSR1 on any rank wins


class Preempted(Exception):
    """Raised on every process after the stop checkpoint is saved."""

    def __init__(self, signal_name: str, checkpoint: str | None):
        super().__init__(f"stopped by {signal_name}; checkpoint {checkpoint}")
        self.signal_name = signal_name
        self.checkpoint = checkpoint


class StopFlag:
    """Set by SIGUSR1/SIGTERM/SIGINT; `agreed()` is the collective check at step boundaries."""

    def __init__(self, armed: bool = True) -> None:
        self.armed = armed  # False: signals keep their usual effect, and nothing is ever agreed
        self.signal_name: str | None = None
        self.saving = False  # a checkpoint is being written: a second Ctrl-C must wait
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if not self.armed:
            return
        for sig in RUN_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """The earlier handlers back; once a stop was asked for, the run's signals are ignored
        instead: a signal repeated on the way out (Slurm, a user) must not turn exit 75 into a
        death by that signal."""
        stopping = self.signal_name is not None
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if stopping else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is None:
            self.signal_name = name
            if name == "SIGINT":
                _say(
                    "Ctrl-C: saving a checkpoint at the next step, then stopping "
                    "(Ctrl-C again to quit at once without it)"
                )
        elif name == "SIGINT":
            if self.saving:
                _say("saving the checkpoint, please wait")
            else:  # out now: further Ctrl-Cs must not interrupt the way out
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                self._previous.pop(signal.SIGINT, None)
                raise KeyboardInterrupt

    @contextmanager
    def saving_checkpoint(self) -> Iterator[None]:
        """While a checkpoint is written, a second Ctrl-C waits for it instead of quitting."""
        before, self.saving = self.saving, True
        try:
            yield
        finally:
            self.saving = before

    @property
    def requeue_wanted(self) -> bool:
        return self.signal_name == "SIGUSR1"

    def agreed(self, accelerator) -> bool:
        """True on every process if any process was signalled (and the same signal_name
        everywhere). Collective when distributed: a one-element all-reduce and a CPU-GPU sync
        point, once per optimizer update; none when not armed."""
        if not self.armed:
            return False
        if accelerator.num_processes == 1:
            self.saving = self.saving or self.signal_name is not None
            return self.signal_name is not None
        code = _CODE.get(self.signal_name, 0.0)
        flag = torch.tensor([code], device=accelerator.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        agreed = flag.item()
        if agreed > 0:
            self.signal_name = next(name for name, c in _CODE.items() if c == agreed)
            self.saving = True  # from here on the stop's save and exit run: see _handle
        return agreed > 0


def _say(text: str) -> None:
    """From a signal handler: one unbuffered write (print could re-enter a stream the handler
    interrupted, e.g. a progress bar's), and only on the main rank."""
    if os.environ.get("RANK", "0") == "0":
        os.write(sys.stderr.fileno(), f"\n{text}\n".encode())


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
