"""`accelerate launch` with the shipped multi-GPU profile (DDP, bf16) and one process trains on the
check device: the profile README tells GPU users to launch with works as shipped."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO, TINY_MODEL, assert_ok, free_port, make_folder
from tests.gpu.checkdevice import assert_finite_losses, check_device, child_env, on_check_device

pytestmark = on_check_device


def test_accelerate_launch_with_the_multi_gpu_profile_and_one_process_trains(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 16)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "accelerate_configs" / "multi_gpu.yaml"),
        "--num_processes",
        "1",
        "--main_process_port",
        str(free_port()),
        "-m",
        "trainer",
        "train",
        "--config",
        "cpu-smoke",
        f"model.name={TINY_MODEL}",
        f"data.root={root}",
        f"output_dir={run}",
        "train.log_every=1",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=child_env()
    )
    assert_ok(proc)
    assert f"run: 1 process(es) on {check_device().type}" in proc.stdout, proc.stdout[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mixed_precision"] == "bf16"  # the profile's
    assert_finite_losses(run)
