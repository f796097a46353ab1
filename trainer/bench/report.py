"""What the bench prints and writes: the header, the table of cases with their ratios, and the
--json report's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer import files
from trainer.bench.cases import Case
from trainer.bench.options import BenchOptions
from trainer.bench.setup import Setup, device_name

RATIOS = (
    ("b/a", "runner / synthetic ceiling"),
    ("b/c", "runner / plain torchvision pipeline"),
    ("b/d", "runner / blog-script setting"),
)


def gib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**30:.2f} GiB"


def header_lines(s: Setup, versions: dict[str, str]) -> list[str]:
    """The device, the model and its settings, the phase, the workers and the data."""
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
    """One row per case (images/s, peak GPU memory, what was timed), then the ratios."""
    width = max(len(f"({c.key}) {c.name}") for c in cases)
    out = [f"{'case':{width}}  {'images/s':>10}  {'peak GPU mem':>12}  measured over"]
    for c in cases:
        out.append(
            f"{f'({c.key}) {c.name}':{width}}  {c.images_per_second:10.1f}  "
            f"{gib(c.peak_memory_bytes):>12}  {c.measured}"
        )
    out.append("")
    for key, meaning in RATIOS:
        if key in ratios:
            out.append(f"{key}  {ratios[key]:6.2f}  {meaning}")
    return out


def settings_json(opts: BenchOptions, s: Setup) -> dict[str, Any]:
    """The report's "settings": what was asked and what it resolved to."""
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


def write_json(opts: BenchOptions, result: dict) -> None:
    """--json FILE, written atomically (bench() checked before any work that it may replace it)."""
    if opts.json:
        files.write_text_atomic(Path(opts.json), json.dumps(result, indent=2) + "\n")
        print(f"numbers -> {opts.json}")


def is_bench_json(path: Path) -> bool:
    """A file an earlier `trainer bench --json` wrote (the only kind --json replaces)."""
    found = files.read_json_or_none(path)
    return isinstance(found, dict) and {"device", "settings"} <= set(found)
