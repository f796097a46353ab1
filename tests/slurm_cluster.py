"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd from Debian's
packages (slurmctld slurmd slurm-client munge), started as root without systemd.

Everything belongs to this cluster alone: a folder of its own (config, spool, logs), its own
munged socket and key, its own controller and node ports, and SLURM_CONF pointing at its config;
clients and jobs find it through `SlurmCluster.env`. So it runs beside a system Slurm or another
test session's cluster, and stopping it touches only the processes it started.

    cluster = start_cluster()          # raises SlurmUnavailable(reason) when it cannot run
    job = cluster.sbatch(["--wrap", "hostname"], cwd=tmp)
    cluster.wait_for(job, lambda j: j["JobState"] == "COMPLETED")
    cluster.stop()

By hand, to try the scripts in launch/slurm/ on one machine:

    python -m tests.slurm_cluster start      # prints the folder and `export SLURM_CONF=...`
    python -m tests.slurm_cluster stop FOLDER
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "slurmstepd")
CLIENTS = ("sbatch", "scontrol", "squeue", "scancel", "sinfo", "munge")
PACKAGES = "slurmctld slurmd slurm-client munge"


class SlurmUnavailable(Exception):
    """This machine cannot run the cluster; the message says why (a reason to skip)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(seconds: float, ok: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ok():
            return True
        time.sleep(0.25)
    return ok()


def _conf(root: Path, node: str, cpus: int, mem_mb: int, ctld_port: int, slurmd_port: int) -> str:
    return f"""\
# Written by tests/slurm_cluster.py: one node, no cgroups, no accounting database.
ClusterName=trainertest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# Our own munged. cred_expire also sets how long a requeued job waits before it may start
# again (Slurm's default is 120 s).
AuthInfo=socket={root}/munge/munge.socket,cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={mem_mb // cpus}
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# One line per job end, requeues included: the history `scontrol show job` does not keep.
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.log
# Batch jobs may be requeued (scontrol requeue, sbatch --requeue).
JobRequeue=1
ReturnToService=2
# Finished jobs stay visible to `scontrol show job` for an hour (there is no sacct here).
MinJobAge=3600
KillWait=10
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
StateSaveLocation={root}/spool/slurmctld
SlurmdSpoolDir={root}/spool/slurmd
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _job_fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", line))


@dataclass
class SlurmCluster:
    root: Path
    node: str
    env: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)  # when started here

    # -- clients ------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw):
        out = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {out.returncode}: {out.stderr.strip()}")
        return out

    def sbatch(self, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
        """Submit; returns the job id. `env` adds to the cluster's environment (sbatch exports
        the whole submitting environment to the job)."""
        out = subprocess.run(
            ["sbatch", "--parsable", *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict: JobState, Restarts, ExitCode, Reason, StdOut, ..."""
        return _job_fields(self.run("scontrol", "show", "job", "-o", job_id).stdout)

    def wait_for(
        self, job_id: str, condition: Callable[[dict], bool], what: str, timeout: float = 180
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if condition(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id}: timed out after {timeout:.0f} s waiting for {what}; now {job}\n"
                    f"{self.logs()}"
                )
            time.sleep(0.25)

    def logs(self, lines: int = 25) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.root / "log" / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {lines} lines)\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- teardown -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job (so no slurmstepd outlives its slurmd), then end our daemons."""
        if "slurmctld" in self.pids:
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                _wait(30, lambda: not self.run("squeue", "-h", check=False).stdout.strip())
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is not None:
                _terminate(pid, name)
            proc = self.procs.pop(name, None)
            if proc is not None:
                proc.wait(timeout=30)  # reap it
        _record(self.root, self.pids)


def _alive(pid: int, name: str) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == name and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _terminate(pid: int, name: str) -> None:
    if not _alive(pid, name):
        return
    os.kill(pid, signal.SIGTERM)
    if not _wait(15, lambda: not _alive(pid, name)):
        os.kill(pid, signal.SIGKILL)


def _record(root: Path, pids: dict[str, int]) -> None:
    (root / "run" / "pids.json").write_text(json.dumps(pids))


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """A daemon in the foreground, in its own session (test signals and Ctrl-C do not reach
    it), its output in LOG."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def check_available() -> None:
    """Raise SlurmUnavailable unless this machine can start the cluster."""
    if sys.platform != "linux":
        raise SlurmUnavailable("a local Slurm cluster needs Linux")
    if os.geteuid() != 0:
        raise SlurmUnavailable("a local Slurm cluster needs root (slurmd runs jobs as any user)")
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None]
    if missing:
        raise SlurmUnavailable(
            f"Slurm/munge programs missing: {', '.join(missing)} "
            f"(apt-get install {PACKAGES}; .ci/run does this)"
        )


def start_cluster(root: Path | None = None, cpus: int | None = None) -> SlurmCluster:
    """Start munged, slurmctld and slurmd in ROOT (a new temporary folder by default) and wait
    until the node is idle. Raises SlurmUnavailable when it cannot."""
    check_available()
    # Short path: munged's socket path must fit in 108 bytes.
    root = Path(root or tempfile.mkdtemp(prefix="trainer-slurm-"))
    for sub in ("munge", "log", "run", "spool/slurmctld", "spool/slurmd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)
    os.chmod(root / "munge", 0o711)  # munged wants the socket's folder searchable by all
    node = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    mem_mb = int(int(Path("/proc/meminfo").read_text().split()[1]) / 1024 * 0.9)
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, node, cpus, mem_mb, _free_port(), _free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root, node, env)
    try:
        _start_daemons(cluster, conf)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_daemons(cluster: SlurmCluster, conf: Path) -> None:
    root, env = cluster.root, cluster.env
    key, sock = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    if not key.exists():
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], check=True, env=env)
    os.chmod(key, 0o400)
    munged = _spawn(
        [
            "munged",
            "--foreground",
            "--force",  # root, and a key under /tmp: munged would refuse both otherwise
            f"--socket={sock}",
            f"--key-file={key}",
            f"--pid-file={root}/run/munged.pid",
            f"--seed-file={root}/munge/munged.seed",
            f"--log-file={root}/log/munged.log",
        ],
        root / "log" / "munged.out",
        env,
    )
    cluster.pids["munged"], cluster.procs["munged"] = munged.pid, munged
    _record(root, cluster.pids)

    def munge_ok() -> bool:
        cred = subprocess.run(["munge", "-n", "-S", str(sock)], capture_output=True, env=env)
        if cred.returncode != 0:
            return False
        back = subprocess.run(["unmunge", "-S", str(sock)], input=cred.stdout, capture_output=True)
        return back.returncode == 0

    if not _wait(15, munge_ok):
        raise SlurmUnavailable(f"munged did not answer; see {root}/log/munged.out")

    ctld = _spawn(["slurmctld", "-D", "-c", "-f", str(conf)], root / "log" / "slurmctld.out", env)
    cluster.pids["slurmctld"], cluster.procs["slurmctld"] = ctld.pid, ctld
    _record(root, cluster.pids)
    ping = lambda: cluster.run("scontrol", "ping", check=False).returncode == 0  # noqa: E731
    if not _wait(30, ping):
        raise SlurmUnavailable(f"slurmctld did not answer\n{cluster.logs()}")

    slurmd = _spawn(
        ["slurmd", "-D", "-N", cluster.node, "-f", str(conf)], root / "log" / "slurmd.out", env
    )
    cluster.pids["slurmd"], cluster.procs["slurmd"] = slurmd.pid, slurmd
    _record(root, cluster.pids)

    def node_idle() -> bool:
        state = cluster.run("sinfo", "-h", "-n", cluster.node, "-o", "%T", check=False).stdout
        if state.strip().startswith(("down", "drain", "fail")):
            cluster.run(
                "scontrol", "update", f"NodeName={cluster.node}", "State=RESUME", check=False
            )
        return state.strip() in ("idle", "mixed", "allocated", "completing")

    if not _wait(60, node_idle):
        raise SlurmUnavailable(f"node {cluster.node} did not become idle\n{cluster.logs()}")


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "start":
        try:
            cluster = start_cluster(Path(argv[1]) if len(argv) > 1 else None)
        except SlurmUnavailable as e:
            print(f"cannot start a local Slurm cluster: {e}", file=sys.stderr)
            return 1
        print(f"cluster folder: {cluster.root}\nexport SLURM_CONF={cluster.env['SLURM_CONF']}")
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        root = Path(argv[1])
        pids = json.loads((root / "run" / "pids.json").read_text())
        env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        SlurmCluster(root, socket.gethostname().split(".")[0], env, pids).stop()
        return 0
    print("usage: python -m tests.slurm_cluster start [FOLDER] | stop FOLDER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
