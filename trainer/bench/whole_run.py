"""`trainer bench --whole-run`: the wall clock of a whole multi-phase run (the
resnet50-two-phase recipe by default), the runner against the loop a blog script writes for the
same phases, on the same pre-split folder, one after the other in one process."""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer.bench.cases import BLOG_BATCH_SIZE, pipeline_used, runner_config
from trainer.bench.images import warm_page_cache
from trainer.bench.options import WHOLE_RUN_RECIPE, BenchOptions
from trainer.bench.report import gib, settings_json, write_json
from trainer.bench.setup import (
    PeakMemory,
    Setup,
    device_name,
    prepare,
    private_caches,
    sync,
    versions,
)


def run_whole(opts: BenchOptions) -> dict[str, Any]:
    """Wall clock of a whole run: trainer.train.run vs the blog-script loop, same data, same device."""
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as tmp, private_caches(Path(tmp)):
        workdir = Path(tmp)
        s = prepare(opts, workdir, WHOLE_RUN_RECIPE, 0)
        if "train" not in s.split_dirs or "val" not in s.split_dirs:
            from trainer.data.layout import DataError

            raise DataError(
                f"--whole-run needs a pre-split folder (train/ val/ [test/]); {str(s.root)!r} is not"
            )
        found = versions()
        header = _header_lines(opts, s, found)
        print("\n".join(header))
        warm_page_cache(s.root)
        print("ours: trainer.train.run ...", flush=True)
        ours = _time_runner(s, workdir / "run")
        print("blog script ...", flush=True)
        with PeakMemory(s.device) as blog_peak:
            blog = blog_whole_run(s)
        blog["peak_memory_bytes"] = blog_peak.bytes
    print("\n" + "\n".join(header + [""] + _table_lines(s, ours, blog)))
    result = {
        "device": device_name(s.device),
        "device_type": s.device.type,
        **found,
        "settings": {
            **settings_json(opts, s),
            "config": opts.config or WHOLE_RUN_RECIPE,
            "phases": [dataclasses.asdict(p) for p in s.cfg.train.phases],
            "split_counts": s.split_counts,
        },
        "whole_run": {
            "ours_seconds": ours["seconds"],
            "ours_train_seconds": ours["summary"].get("train_seconds"),
            "ours_test_accuracy": ours["summary"].get("test_accuracy"),
            "ours_pipeline": ours["pipeline"],
            "ours_peak_memory_bytes": ours["peak_memory_bytes"],
            "ours_phase_seconds": ours["phase_seconds"],
            "blog_seconds": blog["seconds"],
            "blog_phase_seconds": blog["phase_seconds"],
            "blog_test_accuracy": blog["test_accuracy"],
            "blog_peak_memory_bytes": blog["peak_memory_bytes"],
            "blog_over_ours": blog["seconds"] / ours["seconds"],
        },
    }
    write_json(opts, result)
    return result


def _header_lines(opts: BenchOptions, s: Setup, found: dict[str, str]) -> list[str]:
    """The device, the config and its phases, the data's split counts."""
    m = s.cfg.model
    phases = ", ".join(
        f"{p.name} {p.epochs} epoch(s) freeze {p.freeze} lr {p.optim.lr:g}"
        for p in s.cfg.train.phases
    )
    return [
        f"trainer bench --whole-run on {s.device.type}: {device_name(s.device)}; "
        f"torch {found['torch']}, torchvision {found['torchvision']}",
        f"config {opts.config or WHOLE_RUN_RECIPE}: {m.name} (pretrained={m.pretrained}), "
        f"{s.num_classes} classes, {s.image_size} px; phases: {phases}",
        f"data {s.root}: " + ", ".join(f"{k} {n}" for k, n in s.split_counts.items()),
    ]


def _time_runner(s: Setup, run_dir: Path) -> dict[str, Any]:
    """The runner on the config's phases and checkpoint settings: seconds, summary, pipeline."""
    from trainer.train.run import run

    cfg = runner_config(s, run_dir, None)
    with PeakMemory(s.device) as peak:
        start, wall = time.perf_counter(), time.time()
        summary = run(cfg)
        sync(s.device)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "phase_seconds": _runner_phases(run_dir / "metrics.jsonl", wall),
        "summary": summary,
        "pipeline": pipeline_used(s, summary),
        "peak_memory_bytes": peak.bytes,
    }


def _runner_phases(metrics: Path, start: float) -> dict[str, float]:
    """Seconds from the run's start (or the previous phase's last epoch) to each phase's last
    epoch event: the first phase includes the start-up; the test and report come after."""
    ends: dict[str, float] = {}
    for line in metrics.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event["event"] == "epoch":
            ends[event["phase"]] = event["time"]
    phases, previous = {}, start
    for name, end in ends.items():
        phases[name], previous = end - previous, end
    return phases


def _table_lines(s: Setup, ours: dict[str, Any], blog: dict[str, Any]) -> list[str]:
    """Both wall clocks and their ratio."""
    cfg = s.cfg
    ours_desc = (
        f"ours: trainer.train.run (precision {s.precision}, batch {cfg.train.batch_size}, "
        f"{s.workers} workers, data.pipeline {ours['pipeline']}, "
        f"checkpoints {'on' if cfg.checkpoint.enabled else 'off'})"
    )
    blog_desc = (
        f"blog script (fp32, NCHW, batch {BLOG_BATCH_SIZE}, 0 workers, PIL ImageFolder, "
        "augmenting where the phase does)"
    )
    width = max(len(ours_desc), len(blog_desc))
    phases = [
        f"phase '{name}': ours {ours['phase_seconds'].get(name, 0.0):.1f}s, "
        f"blog {blog['phase_seconds'][name]:.1f}s"
        for name in blog["phase_seconds"]
    ]
    return [
        f"{'whole run':{width}}  {'wall clock':>10}  {'peak GPU mem':>12}",
        f"{ours_desc:{width}}  {ours['seconds']:9.1f}s  {gib(ours['peak_memory_bytes']):>12}",
        f"{blog_desc:{width}}  {blog['seconds']:9.1f}s  {gib(blog['peak_memory_bytes']):>12}",
        *phases,
        "(ours' first phase includes its start-up; the test and report come after the phases)",
        "",
        f"blog / ours  {blog['seconds'] / ours['seconds']:6.2f}  (wall-clock ratio: above 1, ours is that many times faster)",
    ]


def _blog_loaders(s: Setup) -> dict[str, Any]:
    """PIL ImageFolder per split folder, batch 16, no workers, the eval view (Resize by 256/224,
    CenterCrop, Normalize); plus "augmented": the train folder through RandomResizedCrop and a
    flip, for the phases that augment."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    norm = [transforms.ToTensor(), transforms.Normalize(s.mean, s.std)]
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(s.image_size), transforms.RandomHorizontalFlip(), *norm]
    )
    resize = round(s.image_size * 256 / 224)
    eval_tf = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(s.image_size), *norm]
    )
    folders = {name: (path, eval_tf) for name, path in s.split_dirs.items()}
    folders["augmented"] = (s.split_dirs["train"], train_tf)
    return {
        name: DataLoader(
            datasets.ImageFolder(str(path), transform=tf),
            batch_size=BLOG_BATCH_SIZE,
            shuffle=name in ("train", "augmented"),
            num_workers=0,
        )
        for name, (path, tf) in folders.items()
    }


def _blog_epoch(model, loader, device, optimizer=None) -> float:
    """One pass over `loader` as a blog script writes it (trains when given an optimizer, reads
    the loss and the number correct back every batch); returns the accuracy."""
    import torch
    import torch.nn.functional as F

    train = optimizer is not None
    model.train(train)
    correct, seen = 0, 0
    with torch.set_grad_enabled(train):
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
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


def blog_whole_run(s: Setup) -> dict[str, Any]:
    """A blog script's multi-phase transfer learning, as written in countless tutorials: PIL
    ImageFolder, batch 16, no workers, fp32, NCHW, `.item()` per batch; the phases (epochs,
    freeze, lr, augmentation) of the config, each with one Adam; the best val epoch's weights
    tested at the end."""
    import torch

    from trainer.model import classifier
    from trainer.train import settings

    start = time.perf_counter()
    loaders = _blog_loaders(s)
    torch.manual_seed(0)
    model, _ = classifier.build_model(s.cfg.model, s.num_classes)
    model = model.to(s.device)
    best_acc, best_state, phase_seconds = -1.0, None, {}
    for phase in s.cfg.train.phases:
        phase_start = time.perf_counter()
        settings.freeze(model, phase)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(trainable, lr=phase.optim.lr)
        train = loaders["augmented" if s.cfg.augments(phase) else "train"]
        for _ in range(phase.epochs):
            _blog_epoch(model, train, s.device, optimizer)
            acc = _blog_epoch(model, loaders["val"], s.device)
            if acc > best_acc:
                best_acc, best_state = acc, copy.deepcopy(model.state_dict())
        sync(s.device)
        phase_seconds[phase.name] = time.perf_counter() - phase_start
    model.load_state_dict(best_state)
    test_acc = _blog_epoch(model, loaders["test"], s.device) if "test" in loaders else None
    sync(s.device)
    return {
        "seconds": time.perf_counter() - start,
        "phase_seconds": phase_seconds,
        "best_val_accuracy": best_acc,
        "test_accuracy": test_acc,
    }
