"""The Slurm scripts on a real one-node Slurm cluster (tests/slurm_cluster.py): a job trains to
the end; a job signalled mid-run checkpoints, requeues itself, resumes and ends with exactly the
weights of the uninterrupted job; the multi-node script on one node (the signal through srun)
with checkpoint.requeue=false ends with exit code 75 and a second submission continues it. The
multi-node script's per-node commands for 2 nodes are rendered without Slurm.

The jobs use the CPU profile (TRAINER_PROFILE=cpu: 2 gloo processes); skipped where no cluster
can be started (not root, or the Debian packages slurmctld slurmd slurm-client munge missing)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, make_pre_split
from tests.slurm_cluster import SlurmCluster, SlurmUnavailable, start_cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="runs the sbatch scripts on a real one-node Slurm cluster"),
]

SLURM = REPO / "launch" / "slurm"
NODE_COMMAND = SLURM / "node_command.sh"
ARGS = (
    "--config",
    "cpu-smoke",
    "train.batch_size=8",  # x 2 processes: 3 steps per epoch over 48 images
    "train.epochs=5",
    "train.log_every=1",
    "checkpoint.every_steps=2",
)
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")


@pytest.fixture(scope="module")
def slurm():
    try:
        cluster = start_cluster()
    except SlurmUnavailable as e:
        pytest.skip(f"no local Slurm cluster: {e}")
    yield cluster
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("slurm") / "images"
    return make_pre_split(root, ["a", "b", "c"], {"train": 16, "val": 4, "test": 2})


def submit(
    cluster: SlurmCluster,
    data: Path,
    run: Path,
    *extra: str,
    script: str = "train_single_node.sbatch",
    options: tuple[str, ...] = (),
) -> str:
    """sbatch SCRIPT with the CPU profile into RUN; the job's output in RUN.out."""
    return cluster.sbatch(
        [
            f"--output={run}.out",
            *options,
            str(SLURM / script),
            *ARGS,
            f"data.root={data}",
            *extra,
        ],
        cwd=REPO,
        env={"OUTPUT_DIR": str(run), "TRAINER_PROFILE": "cpu", "VENV": sys.prefix},
    )


def job_output(run: Path) -> str:
    try:
        return run.with_suffix(".out").read_text(errors="replace").replace("\r", "\n")
    except FileNotFoundError:
        return "(no job output)"


def wait_ended(cluster: SlurmCluster, job_id: str, run: Path, timeout: float = 240) -> dict:
    try:
        return cluster.wait_for(job_id, lambda j: j["JobState"] in ENDED, "its end", timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}\njob output:\n{job_output(run)[-4000:]}") from None


def assert_completed(job: dict, run: Path) -> None:
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (
        f"{job}\n{job_output(run)[-4000:]}"
    )
    assert (run / "summary.json").exists() and (run / "model" / "model.safetensors").exists()


def logged_steps(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line)["step"] for line in lines if '"train"' in line), default=0)


def train_losses(run: Path) -> list[tuple[int, float]]:
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in events if e["event"] == "train"]


def assert_same_weights(run: Path, reference: Path) -> None:
    """Per-step losses, the final model and the last checkpoint's weights, bit for bit."""
    assert train_losses(run) == train_losses(reference)

    def last_checkpoint(r: Path) -> Path:
        return sorted((r / "checkpoints").glob("step-*[0-9]"))[-1]

    assert last_checkpoint(run).name == last_checkpoint(reference).name
    for folder in (lambda r: r / "model", last_checkpoint):
        got = load_file(folder(run) / "model.safetensors")
        want = load_file(folder(reference) / "model.safetensors")
        assert got.keys() == want.keys()
        different = [k for k in want if not torch.equal(got[k], want[k])]
        assert not different, f"{folder(run)}: {len(different)} of {len(want)} tensors differ"


def signal_mid_run(cluster: SlurmCluster, job_id: str, run: Path, at_step: int = 4) -> None:
    """Once the run has logged AT_STEP steps: scancel --signal=USR1 --batch (what
    --signal=B:USR1@N does before the time limit)."""
    deadline = time.monotonic() + 180
    while logged_steps(run) < at_step:
        state = cluster.job(job_id)["JobState"]
        assert state in ("PENDING", "CONFIGURING", "RUNNING"), (
            f"job {job_id} is {state} before step {at_step}\n{job_output(run)[-4000:]}"
        )
        assert time.monotonic() < deadline, f"no step {at_step} in 180 s\n{job_output(run)[-3000:]}"
        time.sleep(0.1)
    cluster.run("scancel", "--signal=USR1", "--batch", job_id)


def job_ends(cluster: SlurmCluster, job_id: str) -> list[str]:
    """JobState of every end of JOB_ID in the job completion log, requeues included."""
    log = cluster.root / "log" / "jobcomp.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [re.search(r"JobState=(\S+)", x)[1] for x in lines if f"JobId={job_id} " in x]


@pytest.fixture(scope="module")
def uninterrupted(slurm, data, tmp_path_factory) -> tuple[dict, Path]:
    run = tmp_path_factory.mktemp("slurm-runs") / "uninterrupted"
    job_id = submit(slurm, data, run)
    return wait_ended(slurm, job_id, run), run


def test_single_node_job_trains_to_the_end(uninterrupted):
    job, run = uninterrupted
    assert_completed(job, run)
    assert job["Restarts"] == "0"
    out = job_output(run)
    assert "machine 0 of 1, 2 processes here" in out
    assert json.loads((run / "summary.json").read_text())["weights_in_sync"] is True
    assert not (run / "resumes.jsonl").exists()


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_weights(
    slurm, data, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    job_id = submit(slurm, data, run)
    signal_mid_run(slurm, job_id, run)
    job = wait_ended(slurm, job_id, run)
    assert_completed(job, run)
    # Requeued (not held: REQUEUE_HOLD would never end) and started again on the node.
    assert int(job["Restarts"]) == 1 and job["NodeList"] == slurm.node, job
    assert job_ends(slurm, job_id)[-1] == "COMPLETED" and len(job_ends(slurm, job_id)) == 2
    out = job_output(run)
    assert "got SIGUSR1, sending it to the ranks" in out
    assert "stopped by SIGUSR1 at step" in out, out[-4000:]
    assert f"requeued Slurm job {job_id}" in out
    assert "restart 1" in out and "resuming from" in out
    resumes = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert len(resumes) == 1 and resumes[0]["step"] >= 4 and resumes[0]["world_size"] == 2
    assert_same_weights(run, uninterrupted[1])


def test_multi_node_script_without_requeue_exits_75_and_resubmitting_continues(
    slurm, data, uninterrupted, tmp_path
):
    """The multi-node script on one node: USR1 to its batch shell goes through srun to the step;
    with checkpoint.requeue=false the job ends with 75, and the same run continues in a second
    job (here the single-node script: both run the same command on one node)."""
    run = tmp_path / "run"
    job_id = submit(
        slurm,
        data,
        run,
        "checkpoint.requeue=false",
        script="train_multi_node.sbatch",
        options=("--nodes=1",),
    )
    signal_mid_run(slurm, job_id, run)
    job = wait_ended(slurm, job_id, run)
    out = job_output(run)
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "75:0", f"{job}\n{out[-4000:]}"
    assert job["Restarts"] == "0"
    assert "got SIGUSR1: passing it to every node through srun" in out
    assert "stopped by SIGUSR1 at step" in out, out[-4000:]
    # The first rank to exit 75 makes torch's launcher SIGTERM the other, which may still be
    # tearing down after the (collective, complete) save: only one "exitcode  : 75" is certain.
    assert "exitcode  : 75" in out, out[-4000:]
    assert "exit 75; the same command continues the run" in out
    assert "srun exited with 75" in out
    # The same run again (checkpoint.requeue may differ: it does not shape the weights).
    again = submit(slurm, data, run)
    assert_completed(wait_ended(slurm, again, run), run)
    assert len((run / "resumes.jsonl").read_text().splitlines()) == 1
    assert_same_weights(run, uninterrupted[1])


# -- the multi-node script, rendered without Slurm --------------------------------------------


def launch_flags(line: str) -> tuple[dict[str, str], list[str]]:
    """(accelerate launch --flags, train.py and what follows) of one rendered command line."""
    words = shlex.split(line)
    words = words[words.index("accelerate.commands.launch") + 1 :]
    script = words.index("train.py")
    flags = dict(zip(words[:script:2], words[1:script:2]))
    return {k.removeprefix("--"): v for k, v in flags.items()}, words[script:]


def fake_slurm_bin(tmp: Path) -> Path:
    """A PATH with a fake srun (each node's task, one after the other, rendering instead of
    running: SLURM_NODEID set per task as Slurm does) and no scontrol."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(
        "#!/bin/bash\n"
        'echo "srun $*" >> "$SRUN_LOG"\n'
        'while [ "${1#-}" != "$1" ]; do shift; done\n'
        "cmd=$1; shift\n"
        'for ((n = 0; n < SLURM_NNODES; n++)); do SLURM_NODEID=$n "$cmd" --print "$@"; done\n'
    )
    srun.chmod(0o755)
    for tool in (
        "bash",
        "env",
        "dirname",
        "basename",
        "awk",
        "head",
        "tr",
        "grep",
        "date",
        "hostname",
        "cat",
    ):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return bin_dir


def slurm_env(nodelist: str, **more: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {
        **base,
        "SLURM_JOB_ID": "1234",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_SUBMIT_DIR": str(REPO),
        "VENV": sys.prefix,
        **more,
    }


def test_multi_node_script_gives_each_node_its_rank_and_node_0_as_main(tmp_path):
    bin_dir = fake_slurm_bin(tmp_path)
    srun_log = tmp_path / "srun.log"
    # The batch shell runs on node 0 with SLURM_NODEID=0: expanding it there would give every
    # node machine rank 0 (accelerate issue 2816).
    env = slurm_env(
        "gpu[07-08]",
        SLURM_NODEID="0",
        SLURM_CPUS_ON_NODE="32",
        PATH=str(bin_dir),
        SRUN_LOG=str(srun_log),
        OUTPUT_DIR="/shared/runs/veg",
    )
    out = subprocess.run(
        [shutil.which("bash"), str(SLURM / "train_multi_node.sbatch"), "data.root=/data/veg"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2, out.stdout
    for node, line in enumerate(lines):
        flags, rest = launch_flags(line)
        assert flags == {
            "config_file": "accelerate_configs/multi_node.yaml",
            "num_machines": "2",
            "machine_rank": str(node),
            "main_process_ip": "gpu07",  # the first host, without scontrol to expand the list
            "main_process_port": str(20000 + 1234),
            "num_processes": "8",  # 4 GPUs x 2 nodes
        }
        assert rest == ["train.py", "data.root=/data/veg", "output_dir=/shared/runs/veg"]
    srun = srun_log.read_text()
    for option in (
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=32",
        "--kill-on-bad-exit=0",
    ):
        assert option in srun, srun


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("nodeA,nodeB", "nodeA"), ("gpu[003-004,009],cpu1", "gpu003"), ("a[1-2]-ib[5-6]", "a1-ib5")],
)
def test_node_command_renders_each_node(nodelist, first, tmp_path):
    bin_dir = fake_slurm_bin(tmp_path)  # no scontrol: the script's own node-list parsing
    paths = [str(bin_dir)]
    if shutil.which("scontrol"):
        paths.append(os.environ["PATH"])  # and with scontrol show hostnames, where installed
    for path in paths:
        lines = []
        for node in (0, 1):
            env = slurm_env(nodelist, SLURM_NODEID=str(node), PATH=path)
            out = subprocess.run(
                [shutil.which("bash"), str(NODE_COMMAND), "--print", "--config", "r.yaml", "x=1"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert out.returncode == 0, out.stderr
            lines.append(out.stdout)
        flags = [launch_flags(line)[0] for line in lines]
        assert [f["machine_rank"] for f in flags] == ["0", "1"]
        assert {f["main_process_ip"] for f in flags} == {first}
        assert {f["main_process_port"] for f in flags} == {"21234"}
        assert {(f["num_machines"], f["num_processes"]) for f in flags} == {("2", "8")}
        rest = launch_flags(lines[0])[1]
        assert rest == ["train.py", "--config", "r.yaml", "x=1", "output_dir=runs/slurm-1234"]


def test_node_command_cpu_profile_and_one_node(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_JOB_ID="77", TRAINER_PROFILE="cpu", VENV=sys.prefix)
    out = subprocess.run(
        ["bash", str(NODE_COMMAND), "--print", "output_dir=/r"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ACCELERATE_USE_CPU=1 ")
    flags, rest = launch_flags(out.stdout)
    assert flags["config_file"] == "accelerate_configs/cpu.yaml"
    assert (flags["num_machines"], flags["machine_rank"], flags["num_processes"]) == ("1", "0", "2")
    assert flags["main_process_ip"] == "127.0.0.1"
    assert rest == ["train.py", "output_dir=/r"]  # an output_dir argument wins over OUTPUT_DIR
    # No GPU and no CPU profile: a message that says what to do, not a launch with 0 processes.
    env.pop("TRAINER_PROFILE")
    env["PATH"] = str(fake_slurm_bin(tmp_path))  # no nvidia-smi
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run(
        ["bash", str(NODE_COMMAND), "--print"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 2 and "--gpus-per-node" in out.stderr, out.stderr


def test_node_command_with_torchrun():
    env = slurm_env("nodeA,nodeB", SLURM_NODEID="1", LAUNCHER="torchrun")
    out = subprocess.run(
        ["bash", str(NODE_COMMAND), "--print", "x=1"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    words = shlex.split(out.stdout)
    words = words[words.index("torch.distributed.run") + 1 :]
    script = words.index("train.py")
    flags = dict(zip(words[:script:2], words[1:script:2]))
    assert flags == {
        "--nnodes": "2",
        "--node_rank": "1",
        "--nproc_per_node": "4",
        "--master_addr": "nodeA",
        "--master_port": "21234",
    }
    assert words[script:] == ["train.py", "x=1", "output_dir=runs/slurm-1234"]
