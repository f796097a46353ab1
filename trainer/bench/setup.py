"""What every bench case shares: the config, the device, the image folder and the settings the
runner would use on them, resolved once by the runner's own helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.bench.images import data_root
from trainer.bench.options import BenchOptions
from trainer.config import ConfigError, PhaseConfig, RunConfig, TrainConfig, load_config

if TYPE_CHECKING:
    from trainer.data.splits import DataIndex

# Speed does not depend on the weights' values, and none can be downloaded on many machines.
BENCH_DEFAULTS = ["model.pretrained=false"]


@dataclass
class Setup:
    """Everything the cases share, resolved once from the config and the device."""

    cfg: RunConfig
    root: Path  # the image root the runner's scan found
    split_dirs: dict[str, Path]  # train/ val/ test/ of a pre-split folder; {} for one folder
    train_dir: Path  # what ImageFolder reads: root/train of a pre-split folder, else root
    layout: str  # pre-split | one folder
    num_classes: int
    images: int  # what ImageFolder finds in train_dir
    split_counts: dict[str, int]  # images per split, as the runner splits them
    device: Any  # torch.device
    precision: str  # no | bf16 | fp16
    precision_note: str  # where the precision came from
    channels_last: bool
    compile: bool
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    workers: int
    phase: PhaseConfig
    phase_index: int


def prepare(opts: BenchOptions, workdir: Path, recipe: str | None, phase: int) -> Setup:
    """The config (--config, else `recipe`; the bench's defaults under the overrides) pointed at
    the data (generated into `workdir` when none is given), resolved for one phase."""
    cfg = _load(opts, None, recipe)
    root = data_root(opts, cfg, workdir)
    return resolve(_load(opts, root, recipe), phase)


def _load(opts: BenchOptions, root: Path | None, recipe: str | None) -> RunConfig:
    extra = [f"data.root={root}"] if root else []
    return load_config(opts.config or recipe, [*BENCH_DEFAULTS, *opts.overrides, *extra])


def resolve(cfg: RunConfig, phase_index: int) -> Setup:
    """The settings every case uses; None-valued switches resolved by the runner's helpers."""
    from trainer.data import loaders
    from trainer.model.classifier import build_model
    from trainer.train import settings

    phases = cfg.train.phases
    if phase_index >= len(phases):
        raise ConfigError(f"--phase: {phase_index}, but the config has {len(phases)} phase(s)")
    device = pick_device()
    precision, note = bench_precision(cfg.train, device)
    index, split_dirs = _scan(cfg)
    _, pre = build_model(dataclasses.replace(cfg.model, pretrained=False), len(index.class_names))
    pre = pre.with_size(cfg.data.image_size)
    counts = index.counts()
    return Setup(
        cfg=cfg,
        root=index.root,
        split_dirs=split_dirs,
        train_dir=split_dirs.get("train", index.root),
        layout="pre-split" if index.layout == "pre-split" else "one folder",
        num_classes=len(index.class_names),
        # A split without a folder of its own (every split of one folder, val without val/)
        # was cut out of the training folder: its images are among those ImageFolder reads.
        images=sum(n for name, n in counts.items() if name == "train" or name not in split_dirs),
        split_counts=counts,
        device=device,
        precision=precision,
        precision_note=note,
        channels_last=settings.channels_last(cfg.train, device),
        compile=cfg.train.compile,
        image_size=pre.image_size,
        mean=pre.mean,
        std=pre.std,
        workers=loaders.auto_num_workers(cfg.data.num_workers, 1),  # the bench is one process
        phase=phases[phase_index],
        phase_index=phase_index,
    )


def _scan(cfg: RunConfig) -> tuple[DataIndex, dict[str, Path]]:
    """The runner's index of data.root (the image check is left to the runner's own case) and
    the split folders it read, which ImageFolder is pointed at ({} for one folder of classes)."""
    from trainer.data import layout, splits

    index = splits.scan(dataclasses.replace(cfg.data, check_images=False))
    return index, layout.split_folders(index.root, cfg.data.layout, []) or {}


def bench_precision(cfg: TrainConfig, device) -> tuple[str, str]:
    """train.mixed_precision, else bf16 on a CUDA device that has it (what the GPU profiles in
    accelerate_configs/ launch the runner with) and fp32 elsewhere; and where it came from.
    The runner leaves an unset train.mixed_precision to accelerate (launcher or config file);
    the bench runs without a launcher, so it picks what those profiles would."""
    import torch

    if cfg.mixed_precision is not None:
        return cfg.mixed_precision, "train.mixed_precision"
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return ("bf16" if bf16 else "no"), "chosen by the bench"


def pick_device():
    """CUDA, else MPS, else the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def device_name(device) -> str:
    """The GPU's name, or the CPU's model and count."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({os.cpu_count()} CPUs)"


def sync(device) -> None:
    """Wait for queued device work: clocks read before this would time the launches only."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class PeakMemory:
    """Peak device memory allocated within the block, in bytes (None off CUDA)."""

    def __init__(self, device):
        self.device, self.bytes = device, None

    def __enter__(self):
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            sync(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


@contextlib.contextmanager
def private_caches(workdir: Path) -> Iterator[None]:
    """Scan verdicts and pixel caches in the bench's own folder: every run starts cold and
    nothing big is left in the user's cache (unless data.cache_dir says where)."""
    old = os.environ.get("TRAINER_CACHE_DIR")
    os.environ["TRAINER_CACHE_DIR"] = str(workdir / "cache")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TRAINER_CACHE_DIR", None)
        else:
            os.environ["TRAINER_CACHE_DIR"] = old


def versions() -> dict[str, str]:
    """torch, torchvision and trainer versions, for the header and the JSON."""
    import torch
    import torchvision

    from trainer.runtime import package_version

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "trainer": package_version("trainer") or "",
    }
