"""Shared fixtures: small generated image folders, a free port, a subprocess runner."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Nothing in the tests may reach the network: fail fast instead of trying downloads.
os.environ.setdefault("TRAINER_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# The scan and pixel caches of test folders go to a throwaway place, not the user's ~/.cache;
# pytest_sessionfinish removes it (each session left one behind: 362 of them, 344 MB, were found).
_THROWAWAY_CACHE = tempfile.mkdtemp(prefix="trainer-test-cache-")
os.environ.setdefault("TRAINER_CACHE_DIR", _THROWAWAY_CACHE)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_THROWAWAY_CACHE, ignore_errors=True)


COLORS = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 200, 40), (200, 60, 220)]


def write_class_images(folder: Path, cls: int, n: int, size: int = 40, seed: int = 0) -> list[Path]:
    """n noisy images whose mean colour and a bar position depend on the class: learnable in 2 epochs."""
    rng = np.random.default_rng([seed, cls])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.normal(COLORS[cls % len(COLORS)], 25, size=(size, size, 3))
        bar = (cls * 7) % (size - 6)
        arr[bar : bar + 6, :, :] = 255
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
        path = folder / f"img_{i:03d}.png"
        img.save(path)
        paths.append(path)
    return paths


def make_folder(
    root: Path, classes: list[str], per_class: int, size: int = 40, seed: int = 0
) -> Path:
    for c, name in enumerate(classes):
        write_class_images(root / name, c, per_class, size, seed)
    return root


def make_pre_split(
    root: Path, classes: list[str], counts: dict[str, int], val_name: str = "val"
) -> Path:
    for split, n in counts.items():
        name = val_name if split == "val" else split
        make_folder(root / name, classes, n, seed={"train": 0, "val": 1, "test": 2}[split])
    return root


@pytest.fixture(autouse=True)
def _drop_checkpoints_after_each_test(request):
    """Checkpoints of a test's own runs are ~150 MB each (ResNet-18 + AdamW state); deleting them
    when the test ends keeps the suite's disk use to a few GB instead of ~15 GB."""
    # Asked for before the test, so tmp_path is torn down after this fixture, not before.
    tmp = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if tmp is not None:
        for folder in sorted(tmp.rglob("checkpoints"), reverse=True):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes x 20 images in one folder (ratio split)."""
    return make_folder(tmp_path / "images", ["cat", "dog", "fox"], 20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(
    *args: str, timeout: int = 600, cwd: Path = REPO, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a console command from the venv (trainer, accelerate) and capture its output."""
    cmd = [str(BIN / args[0]), *args[1:]]
    # The venv's bin first: `accelerate test` starts `accelerate-launch` by name from PATH.
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    full_env = {**os.environ, "PATH": path, **(env or {})}
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def accelerate_launch(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Two real gloo processes through the project's CPU profile (on CPU also where GPUs exist)."""
    return run_cli(
        "accelerate",
        "launch",
        "--config_file",
        str(REPO / "accelerate_configs" / "cpu.yaml"),
        "--main_process_port",
        str(free_port()),
        *args,
        timeout=timeout,
        env={"ACCELERATE_USE_CPU": "true"},
    )


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-6000:]}"
    )
    assert "terminate called" not in proc.stderr, proc.stderr[-4000:]


def train_smoke(
    root: Path, run: Path, *overrides: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`trainer train --config cpu-smoke` on ROOT into RUN, with extra overrides."""
    args = ("trainer", "train", "--config", "cpu-smoke", f"data.root={root}", f"output_dir={run}")
    return run_cli(*args, *overrides, env=env)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained ResNet-18 model folder for classes a and b (32 px): for the CLI's checks of
    predict, eval and export, where what the model answers does not matter."""
    from trainer.config import ModelConfig
    from trainer.data.transforms import Preprocessing
    from trainer.model.classifier import build_model
    from trainer.model.folder import save_model_folder

    cfg = ModelConfig(name="torchvision/resnet18", pretrained=False)
    model, _ = build_model(cfg, 2)
    pre = Preprocessing(32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    folder = tmp_path_factory.mktemp("model") / "model"
    save_model_folder(model, folder, cfg, ["a", "b"], pre)
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, run folder) of one short CPU training run, shared by the integration tests."""
    base = tmp_path_factory.mktemp("trained")
    root = make_folder(base / "images", ["cat", "dog", "fox"], 20)
    run = base / "run"
    assert_ok(train_smoke(root, run, "train.epochs=2", "train.batch_size=8", "train.log_every=1"))
    return root, run
