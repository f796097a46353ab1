"""`trainer bench`: training throughput on one device, measured side by side in one process.

Four cases train the same model (config's model.name, classes, image size, batch, precision,
channels_last, compile, and the freeze policy and optimizer of one phase) and are timed in the
same process, one after another, so their ratios compare like with like:

  (a) synthetic: random tensors already on the device; the ceiling of the model itself.
  (b) the runner: `trainer.loop.run(cfg)` on a JPEG folder, images/s from its metrics.jsonl
      (through whatever input pipeline data.pipeline picks).
  (c) plain torchvision: ImageFolder + PIL RandomResizedCrop/flip/ToTensor/Normalize + DataLoader
      with the runner's worker count, a hand-written loop.
  (d) the blog-script setting: fp32, NCHW, batch 16, no loader workers, `.item()` every batch.

`--whole-run` instead times a whole two-phase run (the resnet50-two-phase recipe by default)
against a blog-script loop of the same phases on the same pre-split folder.

It also writes realistic JPEG folders (`--make-data`): smooth shading, shapes and texture in
class-dependent colours, so files decode like photos of that size rather than like noise or
flat colour. Nothing here asserts a speed: it measures and prints.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import itertools
import json
import math
import multiprocessing
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from trainer import files
from trainer.config import ConfigError, PhaseConfig, RunConfig, load_config

BLOG_BATCH_SIZE = 16  # what the blog scripts use, with num_workers=0, fp32, NCHW
DEFAULT_SIZE = (500, 375)  # a typical web photo
WHOLE_RUN_SIZE = (224, 224)  # the vegetables set's images
WHOLE_RUN_SPLITS = (15_000, 3_000, 3_000)  # its train/val/test counts
WHOLE_RUN_RECIPE = "resnet50-two-phase"
# Speed does not depend on the weights' values, and none can be downloaded on many machines.
BENCH_DEFAULTS = ["model.pretrained=false"]


@dataclass
class BenchOptions:
    """What `trainer bench` was asked for (the command-line flags)."""

    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    data: str | None = None
    make_data: str | None = None
    images: int = 20_000
    split_images: tuple[int, int, int] = WHOLE_RUN_SPLITS
    size: tuple[int, int] | None = None  # (width, height); None: by mode
    classes: int = 15
    quality: int = 90
    steps: int = 100
    warmup: int = 20
    epochs: int = 3
    phase: int = 0
    whole_run: bool = False
    json: str | None = None
    gen_workers: int | None = None

    def __post_init__(self) -> None:
        for flag, value, low in (
            ("--images", self.images, 1),
            ("--classes", self.classes, 2),
            ("--steps", self.steps, 1),
            ("--warmup", self.warmup, 0),
            ("--epochs", self.epochs, 1),
            ("--phase", self.phase, 0),
            ("--gen-workers", self.gen_workers, 1),
        ):
            if value is not None and value < low:
                raise ConfigError(f"{flag}: expected >= {low}, got {value}")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality: expected 1..100, got {self.quality}")
        if self.data and self.make_data:
            raise ConfigError("--data and --make-data: give one (--make-data writes, then exits)")
        train, val, test = self.split_images
        if self.whole_run and (train < self.classes or val < 1 or test < 0):
            raise ConfigError(
                f"--split-images: expected train >= --classes ({self.classes}), val >= 1, "
                f"test >= 0; got {train},{val},{test}"
            )
        if not self.whole_run and self.images < self.classes:
            raise ConfigError(
                f"--images: {self.images} images cannot fill {self.classes} classes (--classes)"
            )

    @property
    def image_size(self) -> tuple[int, int]:
        return self.size or (WHOLE_RUN_SIZE if self.whole_run else DEFAULT_SIZE)

    def counts(self) -> dict[str, int]:
        """Images to generate per split folder ('' = one folder of classes)."""
        if self.whole_run:
            names = ("train", "val", "test")
            return {n: c for n, c in zip(names, self.split_images) if c}
        return {"": self.images}


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or min(int(m[1]), int(m[2])) < 8:
        raise ConfigError(
            f"--size: expected WIDTHxHEIGHT of at least 8x8, like 500x375; got {text!r}"
        )
    return int(m[1]), int(m[2])


def parse_split_images(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ConfigError(
            f"--split-images: expected TRAIN,VAL,TEST counts like 15000,3000,3000; got {text!r}"
        )
    return parts  # type: ignore[return-value]


# --------------------------------------------------------------------------- generated JPEGs


def synthetic_image(seed: int, cls: int, size: tuple[int, int], classes: int) -> Image.Image:
    """A photo-like RGB image: smooth shading, blurred shapes, mid-frequency texture and grain,
    coloured by class (so the classes are learnable). At 500x375 and quality 90 a JPEG of it is
    ~60 KB, at 224x224 ~16 KB: in the range of real photos, unlike noise (huge) or flat colour."""
    w, h = size
    rng = np.random.default_rng([seed, cls])
    hue = cls / classes
    base = np.array([128 + 60 * math.cos(2 * math.pi * (hue + k / 3)) for k in range(3)])
    grid = rng.normal(0, 45, size=(4, 5, 3)) + base
    img = Image.fromarray(np.clip(grid, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        rw, rh = (
            int(rng.integers(max(1, w // 12), max(2, w // 3))),
            int(rng.integers(max(1, h // 12), max(2, h // 3))),
        )
        colour = tuple(int(c) for c in np.clip(base + rng.normal(0, 50, 3), 0, 255))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + rw, y0 + rh], fill=colour)
        else:
            corners = int(rng.integers(3, 7))
            pts = [
                (x0 + int(rng.integers(-rw, rw + 1)), y0 + int(rng.integers(-rh, rh + 1)))
                for _ in range(corners)
            ]
            draw.polygon(pts, fill=colour)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    small = rng.integers(0, 256, (max(1, h // 4), max(1, w // 4), 3), dtype=np.uint8)
    mid = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), dtype=np.float32)
    arr += 0.25 * (mid - 128) + rng.normal(0, 6, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _write_chunk(job: tuple[str, list[tuple[str, int, int]], tuple[int, int], int, int]) -> int:
    root, items, size, classes, quality = job
    written = 0
    for rel, seed, cls in items:
        synthetic_image(seed, cls, size, classes).save(
            os.path.join(root, rel), "JPEG", quality=quality
        )
        written += os.path.getsize(os.path.join(root, rel))
    return written


def make_jpeg_folder(
    root: str | Path,
    counts: dict[str, int],
    size: tuple[int, int],
    classes: int,
    quality: int = 90,
    workers: int | None = None,
) -> dict[str, Any]:
    """Write counts[split] JPEGs per split folder ('' = class folders directly under root),
    classes in turn (class_00, class_01, ...), in parallel with a progress bar."""
    from tqdm.auto import tqdm

    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()):
        raise ConfigError(
            f"--make-data: {str(root)!r} is not empty; bench it with --data, or remove it"
        )
    items = []
    for s, (split, n) in enumerate(counts.items()):
        for c in range(classes):
            (root / split / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cls = i % classes
            rel = os.path.join(split, f"class_{cls:02d}", f"img_{i:06d}.jpg")
            items.append((rel, s * 10_000_000 + i, cls))
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(64, math.ceil(len(items) / (4 * workers))))
    jobs = [
        (str(root), items[i : i + chunk], size, classes, quality)
        for i in range(0, len(items), chunk)
    ]
    # fork: the workers only need numpy and PIL, and start at once (spawn re-imports torch).
    ctx = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    total = 0
    with (
        ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(ctx)) as pool,
        tqdm(total=len(items), desc="writing JPEGs", unit="img") as bar,
    ):
        for job, nbytes in zip(jobs, pool.map(_write_chunk, jobs)):
            total += nbytes
            bar.update(len(job[1]))
    return {"root": str(root), "images": len(items), "bytes": total, "counts": counts}


def _warm_page_cache(root: Path) -> int:
    """Read every file once, so no case pays for the disk and the one run first is not penalized."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                while chunk := f.read(1 << 20):
                    total += len(chunk)
    return total


# --------------------------------------------------------------------------- the shared setup


@dataclass
class Setup:
    """Everything the cases share, resolved once from the config and the device."""

    cfg: RunConfig
    root: Path  # the image root (imagefolder.find_image_root)
    train_dir: Path  # what ImageFolder reads: root/train of a pre-split folder, else root
    layout: str
    num_classes: int
    images: int
    device: Any  # torch.device
    precision: str  # no | bf16 | fp16
    precision_note: str
    channels_last: bool
    compile: bool
    image_size: int
    resize_size: int  # eval resize (the cached pipeline stores images at this size)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    workers: int
    phase: PhaseConfig
    phase_index: int


def device_name(device) -> str:
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


def pick_device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _sync(device) -> None:
    """Wait for queued device work: clocks read before this would time the launches only."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def resolve(cfg: RunConfig, phase_index: int, root: Path) -> Setup:
    """The settings every case uses; None-valued switches resolved the way the runner would."""
    import torch

    from trainer.data import imagefolder, loaders
    from trainer.model.classifier import build_model

    phases = cfg.train.phases
    if phase_index >= len(phases):
        raise ConfigError(f"--phase: {phase_index}, but the config has {len(phases)} phase(s)")
    device = pick_device()
    precision, note = cfg.train.mixed_precision, "train.mixed_precision"
    if precision is None:
        # The GPU launch profiles use bf16; the runner alone would use accelerate's default.
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        precision, note = ("bf16" if bf16 else "no"), "chosen by the bench"
    channels_last = cfg.train.channels_last
    if channels_last is None:
        channels_last = device.type == "cuda"  # as the runner decides it
    image_root = imagefolder.find_image_root(root)
    splits = {
        imagefolder.SPLIT_ALIASES[p.name.lower()]: p
        for p in image_root.iterdir()
        if p.is_dir() and p.name.lower() in imagefolder.SPLIT_ALIASES
    }
    train_dir = splits.get("train", image_root)
    classes = [p for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    images = sum(1 for _ in imagefolder.list_images(train_dir))
    if len(classes) < 2 or images == 0:
        raise imagefolder.DataError(
            f"{str(train_dir)!r}: expected class sub-folders holding images"
        )
    _, pre = build_model(dataclasses.replace(cfg.model, pretrained=False), len(classes))
    pre = pre.with_size(cfg.data.image_size)
    return Setup(
        cfg=cfg,
        root=image_root,
        train_dir=train_dir,
        layout="pre-split" if "train" in splits else "one folder",
        num_classes=len(classes),
        images=images,
        device=device,
        precision=precision,
        precision_note=note,
        channels_last=bool(channels_last),
        compile=cfg.train.compile,
        image_size=pre.image_size,
        resize_size=pre.resize_size,
        mean=pre.mean,
        std=pre.std,
        workers=loaders.auto_num_workers(cfg.data.num_workers, 1),
        phase=phases[phase_index],
        phase_index=phase_index,
    )


def _autocast(s: Setup):
    import torch

    if s.precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float16
    return torch.autocast(s.device.type, dtype=dtype)


def _model(s: Setup, *, channels_last: bool, blog: bool = False):
    """The configured model on the device, in the phase's freeze state, and its optimizer."""
    import torch

    from trainer.model import classifier
    from trainer.train import optim

    torch.manual_seed(0)
    model, _ = classifier.build_model(s.cfg.model, s.num_classes)
    classifier.set_frozen(model, s.phase.freeze)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(s.device, memory_format=fmt).train()
    if s.phase.freeze == "backbone" and s.cfg.train.freeze_bn and not blog:
        classifier.freeze_batchnorm(model.backbone)
    if blog:  # what a blog script writes: one Adam over whatever requires grad
        trainable = [p for p in model.parameters() if p.requires_grad]
        return model, torch.optim.Adam(trainable, lr=s.phase.optim.lr)
    return model, optim.build_optimizer(model, s.phase.optim)


def _step_fn(s: Setup, model, optimizer, *, channels_last: bool, amp: bool, item: bool):
    """One training step on a (images, labels) batch; `item`: read the loss and the number
    correct back every batch, as blog scripts do (a CPU-GPU sync point per step)."""
    import torch
    import torch.nn.functional as F

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    scaler = torch.amp.GradScaler(s.device.type) if amp and s.precision == "fp16" else None
    running = {"loss": 0.0, "correct": 0}

    def step(images, labels) -> None:
        images = images.to(s.device, non_blocking=True, memory_format=fmt)
        labels = labels.to(s.device, non_blocking=True)
        with _autocast(s) if amp else contextlib.nullcontext():
            logits = model(images)
            loss = F.cross_entropy(logits.float(), labels)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if item:
            running["loss"] += loss.item() * labels.size(0)
            running["correct"] += (logits.argmax(1) == labels).sum().item()

    return step


def _timed(step: Callable, batches: Iterator, warmup: int, steps: int, device) -> float:
    """Seconds for `steps` steps after `warmup` untimed ones, the device synchronized at both ends."""
    for _ in range(warmup):
        step(*next(batches))
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    _sync(device)
    return time.perf_counter() - start


class _PeakMemory:
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
            _sync(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------- the four cases


@dataclass
class Case:
    key: str
    name: str
    images_per_second: float
    peak_memory_bytes: int | None
    measured: str
    settings: dict[str, Any] = field(default_factory=dict)


def case_synthetic(s: Setup, steps: int, warmup: int) -> Case:
    """(a) Random tensors already on the device: what the model alone can do."""
    import torch

    batch = s.cfg.train.batch_size
    with _PeakMemory(s.device) as peak:
        model, optimizer = _model(s, channels_last=s.channels_last)
        fmt = torch.channels_last if s.channels_last else torch.contiguous_format
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(batch, 3, s.image_size, s.image_size, generator=gen).to(
            s.device, memory_format=fmt
        )
        y = torch.randint(0, s.num_classes, (batch,), generator=gen).to(s.device)
        run = torch.compile(model) if s.compile else model
        step = _step_fn(s, run, optimizer, channels_last=s.channels_last, amp=True, item=False)
        seconds = _timed(step, itertools.repeat((x, y)), warmup, steps, s.device)
        del model, run, optimizer, step, x, y
    return Case(
        "a",
        "synthetic input on the device",
        batch * steps / seconds,
        peak.bytes,
        f"{steps} steps after {warmup} warm-up",
        {"batch_size": batch},
    )


def _image_folder_loader(s: Setup, batch: int, workers: int):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(s.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(s.mean, s.std),
        ]
    )
    ds = datasets.ImageFolder(str(s.train_dir), transform=tf)
    return DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=s.device.type == "cuda",
        drop_last=len(ds) >= batch,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def _forever(loader) -> Iterator:
    while True:
        yield from loader


def _loader_case(s: Setup, steps: int, warmup: int, *, blog: bool) -> Case:
    batch = BLOG_BATCH_SIZE if blog else s.cfg.train.batch_size
    workers = 0 if blog else s.workers
    channels_last = False if blog else s.channels_last
    # The loader's queue (2 batches per worker) fills while warm-up steps are slow; consuming that
    # many more batches untimed keeps the timed window from starting on a full queue.
    drain = 2 * workers
    with _PeakMemory(s.device) as peak:
        model, optimizer = _model(s, channels_last=channels_last, blog=blog)
        run = torch_compile(model) if (s.compile and not blog) else model
        step = _step_fn(s, run, optimizer, channels_last=channels_last, amp=not blog, item=blog)
        loader = _image_folder_loader(s, batch, workers)
        batches = _forever(loader)
        seconds = _timed(step, batches, warmup + drain, steps, s.device)
        batches.close()
        del loader, batches, model, run, optimizer, step
    if blog:
        return Case(
            "d",
            f"blog script: fp32, NCHW, batch {batch}, 0 workers, .item()",
            batch * steps / seconds,
            peak.bytes,
            f"{steps} steps after {warmup} warm-up",
            {"batch_size": batch, "workers": 0, "precision": "no", "channels_last": False},
        )
    return Case(
        "c",
        "plain ImageFolder + PIL transforms + DataLoader",
        batch * steps / seconds,
        peak.bytes,
        f"{steps} steps after {warmup}+{drain} warm-up",
        {"batch_size": batch, "workers": workers},
    )


def torch_compile(model):
    import torch

    return torch.compile(model)


def _runner_cfg(s: Setup, output_dir: Path, epochs: int | None) -> RunConfig:
    """The config the runner gets: the bench's resolved precision and layout, checkpoints off,
    W&B off, one phase of `epochs` (None: the config's phases as they are)."""
    cfg = s.cfg
    train = dataclasses.replace(
        cfg.train,
        mixed_precision=s.precision,
        channels_last=s.channels_last,
        **({"phases": [dataclasses.replace(s.phase, epochs=epochs)]} if epochs else {}),
    )
    tracking = copy.deepcopy(cfg.tracking)
    tracking.wandb.mode = "disabled"
    return dataclasses.replace(
        cfg,
        output_dir=str(output_dir),
        overwrite=True,
        train=train,
        tracking=tracking,
        checkpoint=dataclasses.replace(cfg.checkpoint, enabled=False) if epochs else cfg.checkpoint,
    )


def _pipeline_used(s: Setup, summary: dict, events: list[dict]) -> str:
    """The input pipeline the run says it used; else what the runner's own chooser decides for
    this config (data.pipeline=auto picks one), marked as such."""
    configured = s.cfg.data.pipeline
    for source in (summary, *events):
        for key in ("pipeline", "data_pipeline", "input_pipeline"):
            used = source.get(key)
            if isinstance(used, str):
                return used if used == configured else f"{configured} -> {used}"
    if configured != "auto":
        return configured
    try:
        from trainer.data.pipelines import fastdata

        n = sum((summary.get("samples") or {}).values())
        use, _ = fastdata.choose(s.cfg.data, n, s.resize_size)
    except (ImportError, AttributeError, TypeError, ValueError, OSError):
        return configured
    return f"auto -> {'cached' if use else 'pil'}"


def _epoch_events(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == "epoch"]


def case_runner(s: Setup, epochs: int, workdir: Path) -> Case:
    """(b) The real runner end to end; images/s of its epochs, the first left out as warm-up."""
    from trainer.train import loop

    run_dir = workdir / "run"
    cfg = _runner_cfg(s, run_dir, epochs)
    with _PeakMemory(s.device) as peak:
        summary = loop.run(cfg)
    events = _epoch_events(run_dir)
    if not events:
        raise RuntimeError(f"the run wrote no epoch events to {run_dir / 'metrics.jsonl'}")
    timed = events[1:] if len(events) >= 2 else events
    seconds = sum(e["epoch_seconds"] for e in timed)
    images = sum(e["images_per_second"] * e["epoch_seconds"] for e in timed)
    first = timed[0]["epoch"]
    last = events[-1]["epoch"]
    span = f"epoch {last}" if first == last else f"epochs {first}-{last}"
    measured = (
        f"{span} of {len(events)} (epoch 1 is warm-up)"
        if len(events) >= 2
        else "epoch 1 of 1 (includes warm-up: use --epochs 2+)"
    )
    pipeline = _pipeline_used(s, summary, events)
    return Case(
        "b",
        f"trainer end to end (data.pipeline {pipeline})",
        images / seconds,
        peak.bytes,
        measured,
        {
            "pipeline": pipeline,
            "epochs": len(events),
            "epoch_images_per_second": [e["images_per_second"] for e in events],
            "train_samples": summary.get("samples", {}).get("train"),
            "batch_size": s.cfg.train.batch_size,
            "workers": s.workers,
        },
    )


# --------------------------------------------------------------------------- the table


def _gib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**30:.2f} GiB"


RATIOS = (
    ("b/a", "runner / synthetic ceiling"),
    ("b/c", "runner / plain torchvision pipeline"),
    ("b/d", "runner / blog-script setting"),
)


def header_lines(s: Setup, versions: dict[str, str]) -> list[str]:
    m, t, p = s.cfg.model, s.cfg.train, s.phase
    return [
        f"trainer bench on {s.device.type}: {device_name(s.device)}; torch {versions['torch']}, "
        f"torchvision {versions['torchvision']}",
        f"model {m.name} (pretrained={m.pretrained}), {s.num_classes} classes, {s.image_size} px, "
        f"batch {t.batch_size}, precision {s.precision} ({s.precision_note}), "
        f"channels_last {'on' if s.channels_last else 'off'}, compile {'on' if s.compile else 'off'}",
        f"phase {s.phase_index} '{p.name}' (freeze {p.freeze}, {p.optim.optimizer}); "
        f"{s.workers} loader workers; data {s.root} ({s.layout}, {s.images} training images)",
    ]


def table_lines(cases: list[Case], ratios: dict[str, float]) -> list[str]:
    width = max(len(f"({c.key}) {c.name}") for c in cases)
    out = [f"{'case':{width}}  {'images/s':>10}  {'peak GPU mem':>12}  measured over"]
    for c in cases:
        out.append(
            f"{f'({c.key}) {c.name}':{width}}  {c.images_per_second:10.1f}  "
            f"{_gib(c.peak_memory_bytes):>12}  {c.measured}"
        )
    out.append("")
    for key, meaning in RATIOS:
        if key in ratios:
            out.append(f"{key}  {ratios[key]:6.2f}  {meaning}")
    return out


def _versions() -> dict[str, str]:
    import torch
    import torchvision

    from trainer.runtime import package_version

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "trainer": package_version("trainer") or "",
    }


@contextlib.contextmanager
def _private_caches(workdir: Path):
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


def _load(opts: BenchOptions, root: Path | None, default_config: str | None) -> RunConfig:
    extra = [f"data.root={root}"] if root else []
    return load_config(opts.config or default_config, [*BENCH_DEFAULTS, *opts.overrides, *extra])


def _data_root(opts: BenchOptions, cfg: RunConfig, workdir: Path) -> Path:
    """--data, else data.root from the config, else a folder generated in the bench's temp dir."""
    if opts.data or cfg.data.root:
        return Path(opts.data or cfg.data.root).expanduser()
    w, h = opts.image_size
    print(f"no --data: generating {sum(opts.counts().values())} JPEGs of {w}x{h} in {workdir}")
    made = make_jpeg_folder(
        workdir / "data",
        opts.counts(),
        opts.image_size,
        opts.classes,
        opts.quality,
        opts.gen_workers,
    )
    return Path(made["root"])


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """(a)-(d) side by side; prints the table, returns (and with --json writes) the numbers."""
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp, _private_caches(Path(tmp)):
        workdir = Path(tmp)
        cfg = _load(opts, None, None)
        root = _data_root(opts, cfg, workdir)
        cfg = _load(opts, root, None)
        s = resolve(cfg, opts.phase, root)
        versions = _versions()
        header = header_lines(s, versions)
        print("\n".join(header))
        _warm_page_cache(s.root)
        cases: dict[str, Case] = {}
        print("(a) synthetic input ...", flush=True)
        cases["a"] = case_synthetic(s, opts.steps, opts.warmup)
        print("(c) plain ImageFolder + DataLoader ...", flush=True)
        cases["c"] = _loader_case(s, opts.steps, opts.warmup, blog=False)
        print("(d) blog-script setting ...", flush=True)
        cases["d"] = _loader_case(s, opts.steps, opts.warmup, blog=True)
        # The runner last: its Accelerator sets process-wide state the hand loops should not see.
        print(f"(b) trainer.loop.run for {opts.epochs} epoch(s) ...", flush=True)
        cases["b"] = case_runner(s, opts.epochs, workdir)
    ordered = [cases[k] for k in "abcd"]
    b = cases["b"].images_per_second
    ratios = {f"b/{k}": b / cases[k].images_per_second for k in "acd"}
    print("\n" + "\n".join(header + [""] + table_lines(ordered, ratios)))
    result = {
        "device": device_name(s.device),
        "device_type": s.device.type,
        **versions,
        "settings": _settings(opts, s),
        "cases": {c.key: dataclasses.asdict(c) for c in ordered},
        "ratios": ratios,
    }
    _write_json(opts, result)
    return result


def _settings(opts: BenchOptions, s: Setup) -> dict[str, Any]:
    return {
        "config": opts.config,
        "overrides": opts.overrides,
        "model": s.cfg.model.name,
        "pretrained": s.cfg.model.pretrained,
        "num_classes": s.num_classes,
        "image_size": s.image_size,
        "batch_size": s.cfg.train.batch_size,
        "precision": s.precision,
        "channels_last": s.channels_last,
        "compile": s.compile,
        "phase": {"index": s.phase_index, "name": s.phase.name, "freeze": s.phase.freeze},
        "workers": s.workers,
        "data": str(s.root),
        "layout": s.layout,
        "train_images": s.images,
        "data_pipeline": s.cfg.data.pipeline,
        "steps": opts.steps,
        "warmup": opts.warmup,
        "epochs": opts.epochs,
    }


def _write_json(opts: BenchOptions, result: dict) -> None:
    if opts.json:
        files.write_text_atomic(Path(opts.json), json.dumps(result, indent=2) + "\n")
        print(f"numbers -> {opts.json}")


# --------------------------------------------------------------------------- the whole run


def _blog_whole_run(s: Setup, splits: dict[str, Path]) -> dict[str, Any]:
    """A blog script's two-phase transfer learning, as written in countless tutorials: PIL
    ImageFolder, batch 16, no workers, fp32, NCHW, `.item()` per batch; the phases (epochs,
    freeze, lr) of the config; the best val epoch's weights tested at the end."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from trainer.model import classifier

    start = time.perf_counter()
    norm = [transforms.ToTensor(), transforms.Normalize(s.mean, s.std)]
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(s.image_size), transforms.RandomHorizontalFlip(), *norm]
    )
    resize = round(s.image_size * 256 / 224)
    eval_tf = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(s.image_size), *norm]
    )
    loaders = {
        name: DataLoader(
            datasets.ImageFolder(str(path), transform=train_tf if name == "train" else eval_tf),
            batch_size=BLOG_BATCH_SIZE,
            shuffle=name == "train",
            num_workers=0,
        )
        for name, path in splits.items()
    }
    torch.manual_seed(0)
    model, _ = classifier.build_model(s.cfg.model, s.num_classes)
    model = model.to(s.device)

    def epoch(loader, train: bool, optimizer=None) -> float:
        model.train(train)
        correct, seen = 0, 0
        with torch.set_grad_enabled(train):
            for images, labels in loader:
                images, labels = images.to(s.device), labels.to(s.device)
                logits = model(images)
                loss = F.cross_entropy(logits, labels)
                if train:
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                _ = loss.item() * images.size(0)  # the running loss they print
                correct += (logits.argmax(1) == labels).sum().item()
                seen += labels.size(0)
        return correct / max(seen, 1)

    best_acc, best_state = -1.0, None
    for phase in s.cfg.train.phases:
        classifier.set_frozen(model, phase.freeze)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=phase.optim.lr)
        for _ in range(phase.epochs):
            epoch(loaders["train"], True, optimizer)
            acc = epoch(loaders["val"], False)
            if acc > best_acc:
                best_acc, best_state = acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test_acc = epoch(loaders["test"], False) if "test" in loaders else None
    _sync(s.device)
    return {
        "seconds": time.perf_counter() - start,
        "best_val_accuracy": best_acc,
        "test_accuracy": test_acc,
    }


def run_whole(opts: BenchOptions) -> dict[str, Any]:
    """Wall clock of a whole run: trainer.loop.run vs the blog-script loop, same data, same device."""
    from trainer.data import imagefolder
    from trainer.train import loop

    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp, _private_caches(Path(tmp)):
        workdir = Path(tmp)
        cfg = _load(opts, None, WHOLE_RUN_RECIPE)
        root = _data_root(opts, cfg, workdir)
        cfg = _load(opts, root, WHOLE_RUN_RECIPE)
        s = resolve(cfg, 0, root)
        splits = {
            imagefolder.SPLIT_ALIASES[p.name.lower()]: p
            for p in s.root.iterdir()
            if p.is_dir() and p.name.lower() in imagefolder.SPLIT_ALIASES
        }
        if "train" not in splits or "val" not in splits:
            raise imagefolder.DataError(
                f"--whole-run needs a pre-split folder (train/ val/ [test/]); {str(s.root)!r} is not"
            )
        versions = _versions()
        counts = {
            k: sum(1 for _ in imagefolder.list_images(splits[k]))
            for k in imagefolder.SPLITS
            if k in splits
        }
        phases = ", ".join(
            f"{p.name} {p.epochs} epoch(s) freeze {p.freeze} lr {p.optim.lr:g}"
            for p in cfg.train.phases
        )
        header = [
            f"trainer bench --whole-run on {s.device.type}: {device_name(s.device)}; "
            f"torch {versions['torch']}, torchvision {versions['torchvision']}",
            f"config {opts.config or WHOLE_RUN_RECIPE}: {cfg.model.name} (pretrained={cfg.model.pretrained}), "
            f"{s.num_classes} classes, {s.image_size} px; phases: {phases}",
            f"data {s.root}: " + ", ".join(f"{k} {n}" for k, n in counts.items()),
        ]
        print("\n".join(header))
        _warm_page_cache(s.root)
        print("ours: trainer.loop.run ...", flush=True)
        run_cfg = _runner_cfg(s, workdir / "run", None)
        with _PeakMemory(s.device) as ours_peak:
            start = time.perf_counter()
            summary = loop.run(run_cfg)
            _sync(s.device)
            ours_seconds = time.perf_counter() - start
        pipeline = _pipeline_used(s, summary, _epoch_events(workdir / "run"))
        print("blog script ...", flush=True)
        with _PeakMemory(s.device) as blog_peak:
            blog = _blog_whole_run(s, splits)
    ours_desc = (
        f"ours: trainer.loop.run (precision {s.precision}, batch {cfg.train.batch_size}, "
        f"{s.workers} workers, data.pipeline {pipeline}, "
        f"checkpoints {'on' if cfg.checkpoint.enabled else 'off'})"
    )
    blog_desc = f"blog script (fp32, NCHW, batch {BLOG_BATCH_SIZE}, 0 workers, PIL ImageFolder)"
    width = max(len(ours_desc), len(blog_desc))
    lines = [
        f"{'whole run':{width}}  {'wall clock':>10}  {'peak GPU mem':>12}",
        f"{ours_desc:{width}}  {ours_seconds:9.1f}s  {_gib(ours_peak.bytes):>12}",
        f"{blog_desc:{width}}  {blog['seconds']:9.1f}s  {_gib(blog_peak.bytes):>12}",
        "",
        f"blog / ours  {blog['seconds'] / ours_seconds:6.2f}  (wall-clock ratio: above 1, ours is that many times faster)",
    ]
    print("\n" + "\n".join(header + [""] + lines))
    result = {
        "device": device_name(s.device),
        "device_type": s.device.type,
        **versions,
        "settings": {
            **_settings(opts, s),
            "config": opts.config or WHOLE_RUN_RECIPE,
            "phases": [dataclasses.asdict(p) for p in cfg.train.phases],
            "split_counts": counts,
        },
        "whole_run": {
            "ours_seconds": ours_seconds,
            "ours_train_seconds": summary.get("train_seconds"),
            "ours_test_accuracy": summary.get("test_accuracy"),
            "ours_pipeline": pipeline,
            "ours_peak_memory_bytes": ours_peak.bytes,
            "blog_seconds": blog["seconds"],
            "blog_test_accuracy": blog["test_accuracy"],
            "blog_peak_memory_bytes": blog_peak.bytes,
            "blog_over_ours": blog["seconds"] / ours_seconds,
        },
    }
    _write_json(opts, result)
    return result


def make_data_only(opts: BenchOptions) -> dict[str, Any]:
    """--make-data DIR: write the folder, say what it holds, and stop."""
    w, h = opts.image_size
    made = make_jpeg_folder(
        opts.make_data, opts.counts(), opts.image_size, opts.classes, opts.quality, opts.gen_workers
    )
    shape = "train/ val/ test/ of " if opts.whole_run else ""
    print(
        f"{made['images']} JPEGs of {w}x{h} ({shape}{opts.classes} classes, quality {opts.quality}), "
        f"{made['bytes'] / 2**20:.1f} MiB, {made['bytes'] / max(made['images'], 1) / 1024:.1f} KiB each "
        f"-> {made['root']}\nbench on it: trainer bench --data {made['root']}"
        + (" --whole-run" if opts.whole_run else "")
    )
    return made


def bench(opts: BenchOptions) -> dict[str, Any]:
    if opts.make_data:
        return make_data_only(opts)
    if opts.data and not Path(opts.data).expanduser().is_dir():
        from trainer.data.imagefolder import DataError

        raise DataError(f"--data: {opts.data!r} is not a folder")
    if opts.json:  # minutes of benchmarking must not end by overwriting a user's file
        files.check_replaceable(Path(opts.json), "--json", _is_bench_json, "a trainer bench report")
    return run_whole(opts) if opts.whole_run else run_bench(opts)


def _is_bench_json(path: Path) -> bool:
    found = files.read_json_or_none(path)
    return isinstance(found, dict) and {"device", "settings"} <= set(found)
