"""What `trainer bench` was asked for: its flags, checked, and the sizes each mode defaults to."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from trainer.config import ConfigError

DEFAULT_SIZE = (500, 375)  # a typical web photo
WHOLE_RUN_SIZE = (224, 224)  # the vegetables set's images
WHOLE_RUN_SPLITS = (15_000, 3_000, 3_000)  # its train/val/test counts
WHOLE_RUN_RECIPE = "resnet50-two-phase"


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
    """--size WIDTHxHEIGHT."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or min(int(m[1]), int(m[2])) < 8:
        raise ConfigError(
            f"--size: expected WIDTHxHEIGHT of at least 8x8, like 500x375; got {text!r}"
        )
    return int(m[1]), int(m[2])


def parse_split_images(text: str) -> tuple[int, int, int]:
    """--split-images TRAIN,VAL,TEST."""
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise ConfigError(
            f"--split-images: expected TRAIN,VAL,TEST counts like 15000,3000,3000; got {text!r}"
        )
    return parts  # type: ignore[return-value]
