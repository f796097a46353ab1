"""`launch/gpu_check.sh --cpu`: the GPU check's every step, tiny, on the CPU, so the script that
will spend a short GPU slot is proven here first (tests/gpu run on the CPU under it too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(
        reason="runs every step of launch/gpu_check.sh --cpu, tests/gpu included (minutes)"
    ),
]

SCRIPT = REPO / "launch" / "gpu_check.sh"
STEPS = [
    "environment",
    "data",
    "tests",
    "bench_eager",
    "frozen_features_off",
    "frozen_features_on",
    "whole_resnet50-two-phase",
    "whole_transfer",
    "bench_compiled",  # last: the longest on a GPU, the first to give way to --time-limit
]

# The tests/gpu tests with no CPU equivalent (skipped under --cpu, the reason recorded).
NOT_ON_CPU = {
    "test_bench_gpu::test_bench_on_cuda_reports_peak_memory_per_case",
    "test_cuda::test_mixed_precision_training_steps_have_finite_losses[fp16]",
    "test_cuda::test_cached_pipeline_with_channels_last_bf16_and_compile_on_gpu",
}


def gpu_check(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", str(SCRIPT), "--cpu", "--work", str(tmp_path / "work"), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


def positive(*values) -> bool:
    return all(isinstance(v, (int, float)) and v > 0 for v in values)


def test_cpu_check_runs_every_step_and_reports_them(tmp_path):
    out = tmp_path / "out"
    proc = gpu_check(tmp_path, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert {"device", "torch", "torchvision", "date"} <= set(report)
    steps = report["steps"]
    assert list(steps) == STEPS
    assert steps["bench_compiled"]["status"] == "skipped" and steps["bench_compiled"]["reason"]
    assert all(s["status"] == "ok" for n, s in steps.items() if n != "bench_compiled"), steps
    tests = steps["tests"]["tests"]
    assert len(tests) >= 11 and steps["tests"]["counts"]["failed"] == 0
    skipped = {n: t["message"] for n, t in tests.items() if t["outcome"] == "skipped"}
    assert set(skipped) == NOT_ON_CPU and all(skipped.values()), skipped  # each with its reason
    measured = {m["check"] for m in steps["tests"]["measured"]}
    assert measured == {"cache_on_device", "jpeg_decode", "feature_cache", "resume"}
    bench = steps["bench_eager"]
    assert positive(*bench["images_per_second"].values(), *bench["ratios"].values())
    assert set(bench["ratios"]) == {"b/a", "b/c", "b/d"}
    off, on = steps["frozen_features_off"], steps["frozen_features_on"]
    assert positive(off["phase_seconds"], on["phase_seconds"], on["features_seconds"])
    for label in ("resnet50-two-phase", "transfer"):
        whole = steps[f"whole_{label}"]
        assert positive(whole["ours_seconds"], whole["blog_seconds"], whole["blog_over_ours"])
    table = (out / "gpu_check.txt").read_text()
    assert table.strip() in proc.stdout
    for line in ("b/a", "b/c", "b/d", "feature cache on vs off", "whole run transfer, blog / ours"):
        assert line in table, table
    assert "all steps passed" in table
    assert (out / "gpu_check_tests.xml").exists() and (out / "gpu_check.log").exists()


def tiny_wheel(folder: Path) -> Path:
    """A wheel of one empty module, to install offline."""
    folder.mkdir()
    path = folder / "gpu_check_probe-0.1-py3-none-any.whl"
    info = "gpu_check_probe-0.1.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("gpu_check_probe.py", "")
        z.writestr(
            f"{info}/METADATA", "Metadata-Version: 2.1\nName: gpu_check_probe\nVersion: 0.1\n"
        )
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return folder


def test_wheels_install_offline_and_a_failed_step_fails_the_check(tmp_path):
    wheels = tiny_wheel(tmp_path / "wheels")
    only = ["--only", "wheels", "--only", "environment"]
    good = gpu_check(tmp_path, "--out", str(tmp_path / "good"), "--wheels", str(wheels), *only)
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    report = json.loads((tmp_path / "good" / "gpu_check.json").read_text())
    assert report["steps"]["wheels"]["wheels"] == [next(wheels.iterdir()).name]
    (tmp_path / "empty").mkdir()
    bad = gpu_check(
        tmp_path, "--out", str(tmp_path / "bad"), "--wheels", str(tmp_path / "empty"), *only
    )
    assert bad.returncode == 1
    assert "FAILED: wheels" in bad.stdout and "no .whl files" in bad.stdout
    report = json.loads((tmp_path / "bad" / "gpu_check.json").read_text())
    assert report["steps"]["environment"]["status"] == "ok"  # the next step still ran


def test_ctrl_c_ends_the_running_step_with_the_check(tmp_path):
    """The steps run in sessions of their own (so a timeout can end each whole): Ctrl-C on the
    check must end the step running then too, not leave it training in the background."""
    import signal
    import time

    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", str(SCRIPT), "--cpu", "--work", str(work), "--out", str(out), "--only", "tests"]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        # A terminal's job takes Ctrl-C; the test may run where SIGINT is ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    log = out / "gpu_check.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "pytest" in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # the step's pytest is running
    os.killpg(proc.pid, signal.SIGINT)  # the whole process group, as a terminal does
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout[-3000:]
    assert "gpu_check: interrupted" in stdout
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(work)], capture_output=True, text=True).stdout
    assert not left.strip(), f"processes of the step still running: {left}"
