"""Shared fixtures: small generated image folders, a free port, a subprocess runner."""

from __future__ import annotations

import compileall
import contextlib
import gc
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Nothing in the tests may reach the network: fail fast instead of trying downloads.
os.environ.setdefault("TRAINER_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
# Threads: `make test` runs one pytest-xdist worker per core; each worker, and the runs it starts,
# gets its share of the cores, and OpenMP threads that wait sleep instead of spinning (beside one
# other busy process a training step ran 8-15x slower with torch's defaults on the 2-core machine).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The scan and pixel caches of test folders go to a throwaway place, not the user's ~/.cache;
# pytest_sessionfinish removes it (each session left one behind: 362 of them, 344 MB, were found).
_THROWAWAY_CACHE = tempfile.mkdtemp(prefix="trainer-test-cache-")
os.environ.setdefault("TRAINER_CACHE_DIR", _THROWAWAY_CACHE)


def pytest_configure(config):
    # Compiled once, before the workers start: where PYTHONDONTWRITEBYTECODE=1 is set (as on the CI
    # machine), each of the ~200 trainer processes the suite starts compiled the package afresh,
    # 1.3 s of its 8-10 s start. compileall writes .pyc files even so; imports only read them.
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        for folder in ("trainer", "launch", "tests"):
            compileall.compile_dir(REPO / folder, quiet=1)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_THROWAWAY_CACHE, ignore_errors=True)


def pytest_unconfigure(config):
    # As trainer.cli.command does: the interpreter's exit then skips its last collections over
    # every object torch and matplotlib made (about 2 s of each pytest process's exit).
    gc.freeze()


# The suite's budget: a test over SLOW_SECONDS (setup, call and teardown together) carries
# @pytest.mark.slow(reason=...); `make test-fast` leaves those out. Any other test that went over
# is named at the end (a warning, not a failure: timings on a shared machine are noisy).
SLOW_SECONDS = 30.0
_seconds: dict[str, float] = {}
_marked_slow: set[str] = set()


# Files that take minutes go first: the Makefile's --no-loadscope-reorder makes xdist hand out
# whole files in collection order (by default it orders them by their number of tests, which put
# the 3-test GPU check, 7 minutes, last), so a long file does not run alone at the end.
LONGEST_FIRST = [  # by their seconds in a full run (2026-12-08), most first
    "tests/integration/test_gpu_check.py",  # 248
    "tests/integration/test_resume.py",  # 208
    "tests/integration/test_resume_ranks.py",  # 178
    "tests/integration/test_distributed.py",  # 169
    "tests/integration/test_slurm.py",  # 153
    "tests/integration/test_demo.py",  # 142
    "tests/integration/test_cpu_precision.py",  # 108
    "tests/integration/test_speed_paths.py",  # 49
    "tests/integration/test_bench.py",  # 38
    "tests/integration/test_audit.py",  # 37
    "tests/integration/test_interrupts.py",  # 35
    "tests/integration/test_audit_labels.py",  # 34
    "tests/integration/test_bad_files.py",  # 32
    "tests/integration/test_train_end_to_end.py",  # 30
]


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file and among the rest stays


def pytest_runtest_logreport(report):
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration
    if "slow" in report.keywords:
        _marked_slow.add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    over = [n for n, s in _seconds.items() if s > SLOW_SECONDS and n not in _marked_slow]
    if over:
        terminalreporter.section(f"tests over {SLOW_SECONDS:.0f} s without a slow marker")
        for nodeid in sorted(over, key=_seconds.get, reverse=True):
            terminalreporter.write_line(f"{_seconds[nodeid]:7.1f}s  {nodeid}")


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


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """In-process runs (cli.main) leave process-wide state that a fresh `trainer` process would not
    have: accelerate's AcceleratorState singleton (the next Accelerator with another
    mixed_precision then raises) and Pillow's pixel limit as the last run set it. Each test starts
    from a fresh process's values, whichever test ran before it in this worker."""
    pixels = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = pixels
    if "accelerate.state" in sys.modules:
        sys.modules["accelerate.state"].AcceleratorState._reset_state(True)


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


# timm's test_resnet: 0.4M parameters, ~7x faster a step than ResNet-18 at 32 px, with the same
# parts (convolutions, BatchNorm, a pooled feature vector). For tests not about the backbone.
TINY_MODEL = "timm/test_resnet"


def train_smoke(
    root: Path, run: Path, *overrides: str, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`trainer train --config cpu-smoke` on ROOT into RUN with TINY_MODEL (a model.name in
    `overrides` wins), with extra overrides: in this process (cli_here), or in a new one where
    the run needs its own environment `env`."""
    args = ("trainer", "train", "--config", "cpu-smoke", f"model.name={TINY_MODEL}")
    args += (f"data.root={root}", f"output_dir={run}")
    if env is None:
        return cli_here(*args, *overrides)
    return run_cli(*args, *overrides, env=env)


def cli_here(*args: str) -> subprocess.CompletedProcess:
    """`trainer ARGS...` in this process, its exit code and output as run_cli gives them,
    without a new interpreter's imports (about 10 s of torch, torchvision, sklearn and
    matplotlib). For tests whose subject is not the process boundary (signals, a killed run,
    2 processes, what a fresh process imports)."""
    from accelerate.state import AcceleratorState

    from trainer.cli import main

    assert args[0] == "trainer", args
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args[1:]))
            except SystemExit as e:  # a stopped run's exit code (75), as the process gives it
                code = e.code if isinstance(e.code, int) else 1
    finally:
        AcceleratorState._reset_state(True)  # the next run's Accelerator starts from its config
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name`, built by `build(folder)` once per pytest run: the first xdist worker
    to ask builds it under a file lock, the others wait and get the same folder. Shared: a test
    copies it before changing anything in it."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder = base / "built-once" / name
    folder.parent.mkdir(exist_ok=True)
    with FileLock(f"{folder}.lock"):
        done = Path(f"{folder}.built")  # beside it: tests list what the folder holds
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained TINY_MODEL folder for classes a and b (32 px): for the CLI's checks of
    predict, eval and export, where what the model answers does not matter."""
    from trainer.config import ModelConfig
    from trainer.data.transforms import Preprocessing
    from trainer.model.classifier import build_model
    from trainer.model.folder import save_model_folder

    cfg = ModelConfig(name=TINY_MODEL, pretrained=False)
    model, _ = build_model(cfg, 2)
    pre = Preprocessing(32, 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    folder = tmp_path_factory.mktemp("model") / "model"
    save_model_folder(model, folder, cfg, ["a", "b"], pre)
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, run folder) of one short CPU training run, shared by the integration tests."""

    def build(base: Path) -> None:
        root = make_folder(base / "images", ["cat", "dog", "fox"], 20)
        overrides = ("train.epochs=2", "train.batch_size=8", "train.log_every=1")
        # a process of its own: the run most tests read is the command exactly as users run it
        args = ("--config", "cpu-smoke", f"data.root={root}", f"output_dir={base / 'run'}")
        assert_ok(run_cli("trainer", "train", *args, *overrides))

    base = built_once(tmp_path_factory, "trained", build)
    return base / "images", base / "run"
