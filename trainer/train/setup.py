"""Everything a training run builds once, in the order that keeps its random draws fixed.

Inputs are checked before output_dir is touched (data.root, the model); the initial weights are
drawn with train.seed, the same on every rank; then output_dir is claimed and the run starts
fresh or continues a checkpoint (trainer.train.resume); from there on each rank draws its own
augmentation randomness (train.seed + rank). What a checkpoint restores goes into a State, the
rest into the Context that every phase and epoch reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import PIL.Image
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from trainer import runtime
from trainer.config import RunConfig
from trainer.data import badfiles, loaders, splits
from trainer.data.pipelines import choose, pixelcache
from trainer.data.pipelines.base import Inputs, Pipeline
from trainer.data.pipelines.pixelcache import PixelCache
from trainer.data.splits import DataIndex
from trainer.data.transforms import Preprocessing
from trainer.model.backbones import build_backbone
from trainer.model.classifier import Classifier, build_head
from trainer.train import distributed, losses, placement, rundir, settings, state
from trainer.train.checkpointer import Checkpointer
from trainer.train.ema import ModelEMA, NoEMA, make_ema
from trainer.train.preemption import StopFlag
from trainer.train.resume import Resume, continue_run, prepare_run_dir
from trainer.train.selection import Selector
from trainer.train.startup import Startup
from trainer.train.state import State
from trainer.train.tracking import Tracker


@dataclass
class Context:
    """What one run holds from setup to its end; nothing in it changes between epochs."""

    cfg: RunConfig
    accelerator: Accelerator
    run_dir: Path
    index: DataIndex
    pre: Preprocessing  # the model's preprocessing at data.image_size
    pipeline: Pipeline  # data.pipeline's choice: pil, cached or decode
    criterion: losses.Criterion
    mixer: Callable  # MixUp/CutMix, or images and labels as they are
    channels_last: bool
    tracker: Tracker
    stop: StopFlag
    ema: ModelEMA | NoEMA
    checkpointer: Checkpointer
    selector: Selector
    startup: Startup  # the time to the first training step, part by part

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names


def setup(
    cfg: RunConfig, accelerator: Accelerator, claim: rundir.Claim, startup: Startup
) -> tuple[Context, State, torch.nn.Module]:
    """The run's context, where it starts (fresh or from a checkpoint) and its model."""
    index, model, pre, prepared = _inputs(cfg, accelerator, startup)
    # Lock output_dir (refusing one that is not a run's or is in use), then start fresh or
    # continue the run there: the first time anything in it is written or moved.
    claim.acquire()
    run_dir, resume = prepare_run_dir(cfg, accelerator)
    if resume:
        continue_run(run_dir, resume, index, accelerator)
        model.load_state_dict(resume.payload.model)
    startup.lap("run folder")
    # Distinct augmentation randomness per rank from here on (the weights are already equal).
    set_seed(cfg.train.seed + accelerator.process_index)
    pipeline = _pipeline(cfg, accelerator, index, pre, prepared)
    criterion = losses.make_criterion(cfg.train, index.class_counts("train"), accelerator.device)
    mixer = losses.batch_mixer(cfg.train, len(index.class_names)) or losses.no_mixing
    tracker = Tracker(
        accelerator, run_dir, cfg, resume_step=resume.state["step"] if resume else None
    )
    if accelerator.is_main_process:
        splits.write_splits_csv(index, run_dir / "splits.csv")
        if index.bad_files:
            splits.write_bad_files_csv(index, run_dir / "bad_files.csv")
    _describe(cfg, accelerator, index, pre, pipeline.inputs.workers, run_dir)
    start = _start(cfg, accelerator, tracker, resume)
    model = distributed.sync_batchnorm(cfg, accelerator, model)
    ema = make_ema(cfg.train, model, accelerator.device, _saved_ema(resume))
    stop = StopFlag(armed=cfg.checkpoint.enabled)  # a stop saves a checkpoint: none, no stop
    checkpoints = run_dir / "checkpoints"
    ctx = Context(
        cfg=cfg,
        accelerator=accelerator,
        run_dir=run_dir,
        index=index,
        pre=pre,
        pipeline=pipeline,
        criterion=criterion,
        mixer=mixer,
        channels_last=settings.channels_last(cfg.train, accelerator.device),
        tracker=tracker,
        stop=stop,
        ema=ema,
        checkpointer=Checkpointer(cfg.checkpoint, accelerator, checkpoints, ema, stop, claim),
        selector=_selector(cfg, accelerator, run_dir, index, pre),
        startup=startup,
    )
    startup.lap("other setup")
    return ctx, start, model


def _selector(
    cfg: RunConfig, accelerator: Accelerator, run_dir: Path, index: DataIndex, pre: Preprocessing
) -> Selector:
    augments = any(cfg.augments(p) for p in cfg.train.phases)
    flips = {"horizontal": augments and cfg.data.hflip, "vertical": augments and cfg.data.vflip}
    return Selector(
        accelerator,
        run_dir / "model",
        cfg.model,
        index.class_names,
        pre,
        cfg.train.early_stopping_patience,
        flips,
    )


def _inputs(
    cfg: RunConfig, accelerator: Accelerator, startup: Startup
) -> tuple[DataIndex, torch.nn.Module, Preprocessing, Prepared]:
    """The data's index and the model with its initial weights, checked before output_dir is
    touched: a typo in data.root or model.name must not cost the run that output_dir holds."""
    placement.check_placement(cfg.output_dir, cfg.data.root)
    cache_name = "data.cache_dir" if cfg.data.cache_dir else "the pixel cache ($TRAINER_CACHE_DIR)"
    placement.check_cache_placement(
        pixelcache.cache_root(cfg.data), cache_name, cfg.output_dir, cfg.data.root
    )
    set_seed(cfg.train.seed)  # the same initial weights on every rank
    if cfg.data.max_image_pixels:  # what the scan let through, the loader must open
        PIL.Image.MAX_IMAGE_PIXELS = cfg.data.max_image_pixels
    listing = splits.list_images(cfg.data)  # the folder first: no model download for a typo
    startup.lap("index")
    # The backbone before any decoding: its preprocessing sizes the pixel cache.
    with accelerator.main_process_first():  # one download of pretrained weights
        backbone, dim, pre = build_backbone(cfg.model.name, cfg.model.pretrained)
    startup.lap("model build")
    pre = pre.with_size(cfg.data.image_size)
    index, prepared = _index(cfg, accelerator, listing, pre, startup)
    model = Classifier(backbone, build_head(cfg.model, dim, len(index.class_names)))
    startup.lap("model build")
    return index, model, pre, prepared


@dataclass
class Prepared:
    """The input pipeline chosen while indexing, and the pixel cache when it is the cached one."""

    pipeline: str  # pil, cached or decode
    pixels: PixelCache | None


def _index(
    cfg: RunConfig,
    accelerator: Accelerator,
    listing: splits.Listing,
    pre: Preprocessing,
    startup: Startup,
) -> tuple[DataIndex, Prepared]:
    """The listed files' index, without the bad ones. The cached pipeline's pixel cache is built
    here, before the split: its decode of each file is also the bad-file check. Every rank runs
    this at once: one process per cache folder decodes while the others wait for it."""
    augments = any(cfg.augments(p) for p in cfg.train.phases)
    name, why = choose.choose(cfg.data, len(listing.paths()), pre.resize_size, augments)
    accelerator.print(f"input: {why}")
    pixels = None
    if name == "cached":
        pixels = _pixel_cache(cfg, accelerator, listing, pre)
        bad = splits.left_out(pixels.bad, listing.root, cfg.data)
        startup.decoded += pixels.decoded
        startup.lap("cache build", check=0.0)  # the cache's decode was the check
    else:
        bad = splits.find_bad_files(listing, cfg.data)
        startup.decoded += bad.decoded
        startup.lap("check")
    index = splits.index(listing, cfg.data, bad)
    startup.lap("index")
    return index, Prepared(name, pixels)


def _pixel_cache(
    cfg: RunConfig, accelerator: Accelerator, listing: splits.Listing, pre: Preprocessing
) -> PixelCache:
    """The pixel cache of every listed file; its verdicts are kept for the bad-file check too
    (a later `trainer scan`, or a run of another pipeline, then decodes nothing)."""
    paths = listing.paths()
    pixels = pixelcache.build(
        paths,
        pre,
        cfg.data,
        badfiles.default_workers(),
        say=accelerator.print,
        tell=lambda line: print(line, flush=True),  # a build or a wait, by any process
    )
    if pixels.decoded and cfg.data.check_images:  # by the process that built it, once
        verdicts = badfiles.cache_file(listing.root)
        badfiles.remember(paths, pixels.bad, cfg.data.max_image_pixels, verdicts)
    return pixels


def _pipeline(
    cfg: RunConfig,
    accelerator: Accelerator,
    index: DataIndex,
    pre: Preprocessing,
    prepared: Prepared,
) -> Pipeline:
    """The input pipeline chosen while indexing, over the index's splits."""
    workers = loaders.auto_num_workers(cfg.data.num_workers, runtime.local_world_size(accelerator))
    inputs = Inputs(
        cfg.data,
        index.splits,
        index.class_names,
        pre,
        seed=cfg.train.seed,
        workers=workers,
        eval_batch=settings.eval_batch_size(cfg.train),
    )
    return choose.build(inputs, accelerator, prepared.pipeline, prepared.pixels)


def _start(
    cfg: RunConfig, accelerator: Accelerator, tracker: Tracker, resume: Resume | None
) -> State:
    """Where training starts: from nothing, or from the checkpoint being continued."""
    if resume is None:
        return state.fresh(cfg.train.select_metric)
    start = state.restored(resume, cfg.train.select_metric)
    tracker.log(
        "resume",
        step=start.progress.step,
        epoch=start.progress.epoch,
        phase=resume.state["phase"],
        checkpoint=resume.folder.name,
        world_size=accelerator.num_processes,
    )
    return start


def _saved_ema(resume: Resume | None) -> tuple[dict, int] | None:
    if resume is None or resume.payload.ema is None:
        return None
    return resume.payload.ema, resume.state["ema_updates"]


def _describe(
    cfg: RunConfig,
    accelerator: Accelerator,
    index: DataIndex,
    pre: Preprocessing,
    workers: int,
    run_dir: Path,
) -> None:
    a = accelerator
    for note in index.notes:
        a.print(f"note: {note}")
    counts = ", ".join(f"{s} {n}" for s, n in index.counts().items())
    a.print(
        f"data: {index.root} ({index.layout}), {len(index.class_names)} classes, {counts}\n"
        f"model: {cfg.model.name} (pretrained={cfg.model.pretrained}), {cfg.model.head} head, "
        f"input {pre.image_size}px\n"
        f"run: {a.num_processes} process(es) on {a.device.type}, mixed_precision={a.mixed_precision}, "
        f"batch {cfg.train.batch_size}/process x {cfg.train.grad_accum_steps} accumulation, "
        f"{workers} loader workers/process -> {run_dir}"
    )
