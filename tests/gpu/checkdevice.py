"""Which device do the GPU tests run on, and how do they start the trainer there?

The device comes from one place: TRAINER_CHECK_DEVICE (`launch/gpu_check.sh --cpu` sets it to
cpu, so the GPU tests' own code is proven on a CPU before GPU time is spent on it), else CUDA
when torch sees it. Neither: every test here skips, as in a plain `make test` on a CPU machine.
A test that needs CUDA itself (not just a device) says so with `needs_cuda(reason)`.

The trainer is started as `python -m trainer` with the repository on PYTHONPATH: the GPU machine
runs the checkout as it is, without `pip install -e .` (no `trainer` script on its PATH).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY_MODEL

CHECK_DEVICE_ENV = "TRAINER_CHECK_DEVICE"
RECORD_ENV = "TRAINER_CHECK_RECORD"  # a JSON-lines file the measured tolerances are appended to


def check_device() -> torch.device | None:
    """The device the GPU tests run on; None: they skip."""
    asked = os.environ.get(CHECK_DEVICE_ENV, "").strip()
    if asked:
        return torch.device(asked)
    return torch.device("cuda") if torch.cuda.is_available() else None


def skip_reason() -> str | None:
    """Why the GPU tests cannot run here, or None when they can."""
    device = check_device()
    if device is None:
        return f"needs CUDA (or {CHECK_DEVICE_ENV}=cpu, as `launch/gpu_check.sh --cpu` sets)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"{CHECK_DEVICE_ENV}=cuda but torch sees no CUDA device"
    return None


# Every GPU test module starts with `pytestmark = on_check_device`.
on_check_device = [
    pytest.mark.gpu,
    pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason())),
]


def needs_cuda(reason: str) -> pytest.MarkDecorator:
    """For a test with no CPU equivalent: skipped on the CPU with `reason` (recorded by gpu_check)."""
    device = check_device()
    return pytest.mark.skipif(device is None or device.type != "cuda", reason=reason)


def on_cpu() -> bool:
    device = check_device()
    return device is not None and device.type == "cpu"


def child_env(extra: dict | None = None) -> dict:
    """Environment of a trainer process: the repository importable, no downloads, and on the
    CPU device no GPU visible (so a check on a GPU machine with --cpu stays on the CPU)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        ),
        "TRAINER_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    if on_cpu():
        env["CUDA_VISIBLE_DEVICES"] = ""
    return {**env, **(extra or {})}


def run_trainer(
    *args: str, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python -m trainer ARGS` from the repository root, output captured."""
    return run_python("-m", "trainer", *args, timeout=timeout, env=env)


def run_python(
    *args: str, timeout: int = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`python ARGS` (this interpreter) from the repository root, output captured."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(env),
    )


def train_tiny(root: Path, run: Path, *overrides: str) -> subprocess.CompletedProcess:
    """`trainer train --config cpu-smoke` with TINY_MODEL (timm's test_resnet at 32 px, random
    init) on ROOT into RUN."""
    return run_trainer(
        "train",
        "--config",
        "cpu-smoke",
        f"model.name={TINY_MODEL}",
        f"data.root={root}",
        f"output_dir={run}",
        *overrides,
    )


def losses(run: Path) -> list[float]:
    """Every logged training loss of a run (train events of metrics.jsonl)."""
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in events if e.get("event") == "train"]


def assert_finite_losses(run: Path) -> None:
    found = losses(run)
    assert found and all(math.isfinite(x) for x in found), found


def record(check: str, **values) -> None:
    """Append a measured difference (and the tolerance it was held to) for gpu_check's report."""
    line = {"check": check, "device": str(check_device()), **values}
    print(json.dumps(line))
    path = os.environ.get(RECORD_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def max_difference(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over the tensors of two state dicts (same keys)."""
    assert got.keys() == want.keys()
    return max(
        (got[k].double() - want[k].double()).abs().max().item() if got[k].numel() else 0.0
        for k in want
    )
