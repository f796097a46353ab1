"""Which input pipeline feeds a run (data.pipeline), and building it.

auto takes the cached pipeline unless an augmentation needs PIL images (then pil) or the cache
would not fit on its disk (then decode); a pipeline asked for by name is refused, with the
reason, when it cannot do what the config asks.
"""

from __future__ import annotations

import shutil

from trainer.config import ConfigError, DataConfig
from trainer.data.pipelines.base import Inputs, Pipeline
from trainer.data.pipelines.cached import CachedPipeline
from trainer.data.pipelines.decode import DecodePipeline
from trainer.data.pipelines.pil import PilPipeline
from trainer.data.pipelines.pixelcache import PixelCache, amount, cache_root, unusable_folder


def choose(
    cfg: DataConfig, n_images: int, size: int, augments: bool | None = None
) -> tuple[str, str]:
    """pil, cached or decode, and a sentence saying why (for the log); ConfigError when the
    pipeline asked for cannot do what the config asks. `augments`: whether any phase augments
    (None: data.augment)."""
    if cfg.pipeline == "pil":
        return "pil", "data.pipeline=pil"
    augments = cfg.augment if augments is None else augments
    needs_pil = []
    if augments and cfg.auto_augment != "none":
        needs_pil.append(f"data.auto_augment={cfg.auto_augment}")
    if augments and cfg.random_erasing:
        needs_pil.append("data.random_erasing")
    if needs_pil:
        why = f"{', '.join(needs_pil)} runs on PIL images"
        if cfg.pipeline != "auto":  # cached or decode, asked for by name: never overridden
            raise ConfigError(f"data.pipeline={cfg.pipeline}: {why}; use data.pipeline=pil or auto")
        return "pil", f"PIL pipeline: {why}"
    if cfg.pipeline == "decode":
        return "decode", "decode pipeline: JPEG batches decoded on the device, augmented in batches"
    root = cache_root(cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unusable_folder(root, e) from None
    # uint8 RGB at the eval resize: S x S for square images, up to S x 1.5S for others (windows)
    need = n_images * size * size * 3
    free = shutil.disk_usage(root).free
    if need > 0.9 * free:  # a tenth kept free for everything else on that disk
        why = (
            f"the pixel cache needs at least {amount(need)} ({n_images:,} images x {size}x{size}x3 "
            f"bytes), {root} has {amount(free)} free"
        )
        bigger = f"data.cache_dir=DIR on a disk with {amount(need / 0.9)} free"
        if cfg.pipeline == "cached":
            raise ConfigError(
                f"data.pipeline=cached: {why}; set {bigger}, or data.pipeline=decode (no cache: "
                "JPEGs decoded on the device every epoch)"
            )
        return "decode", (
            f"decode pipeline: {why}; JPEGs are decoded on the device every epoch (for the "
            f"cached pipeline: {bigger})"
        )
    return "cached", f"cached pipeline: images decoded once at {size}px, augmented in batches"


def build(inputs: Inputs, accelerator, name: str, pixels: PixelCache | None) -> Pipeline:
    """The pipeline `choose` named, ready to give loaders (the cached one over `pixels`, the
    pixel cache of every indexed file, already built)."""
    if name == "pil":
        return PilPipeline(inputs)
    if name == "decode":
        return DecodePipeline(inputs, accelerator.device)
    assert pixels is not None, "the cached pipeline needs the pixel cache built while indexing"
    return CachedPipeline(inputs, pixels, accelerator.device, accelerator.print)
