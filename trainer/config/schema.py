"""What keys does a run's config have? The dataclass tree: each field's type, default and meaning
(the docstring under it, shown by `trainer config --keys`), and the checks each section makes of
itself (numbers against ranges.RANGES, the rest in its __post_init__).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.config.ranges import RANGES, number_kind


class ConfigError(ValueError):
    """A user's configuration mistake; the message names the dotted key and what to do."""


@functools.cache
def _numeric_fields(cls: type) -> list[tuple[str, type, bool]]:
    hints = typing.get_type_hints(cls)
    found = [(f.name, number_kind(hints[f.name])) for f in dataclasses.fields(cls)]
    return [(name, *kind) for name, kind in found if kind]


def check_numbers(obj: Any) -> None:
    """Every number of a config dataclass finite and in its RANGES entry, else a ConfigError
    naming the key (the caller adds the dotted prefix)."""
    for name, kind, nullable in _numeric_fields(type(obj)):
        limits = RANGES[f"{type(obj).__name__}.{name}"]
        value = getattr(obj, name)
        for x in value if isinstance(value, list) else [value]:
            if x is None and nullable:
                continue
            number = isinstance(x, (int, float)) and not isinstance(x, bool)
            if number and (kind is float or isinstance(x, int)) and x in limits:
                continue
            expected = limits.describe(kind is int) + (" or null" if nullable else "")
            shown = f"{x!r} in {value}" if isinstance(value, list) else repr(x)
            raise ConfigError(f"{name}: expected {expected}, got {shown}{limits.why}")


@dataclass
class DataConfig:
    root: str = ""
    """Image folder: class sub-folders, or train/ + val|validation/ (+ test/) holding them."""
    layout: Literal["auto", "pre-split", "classes"] = "auto"
    """pre-split: train/ (+ val|validation/, test/) of class folders; classes: every sub-folder is a
    class, split by data.split; auto: pre-split when train/ is there, and stop when unsure."""
    split: list[float] = field(default_factory=lambda: [0.7, 0.2, 0.1])
    """Train/val/test ratios for a folder that is not pre-split; stratified per class."""
    split_seed: int = 42
    """Seed of the ratio split; kept apart from train.seed so the split stays put across runs."""
    group_duplicates: bool = False
    """Keep each group of exact or near copies found by `trainer audit DATA` inside one split of
    the ratio split (no test image with a copy in train); needs an audit of the folder."""
    image_size: int | None = None
    """Side of the square crop fed to the model, in pixels; null: the backbone's own (224)."""
    num_workers: int | None = None
    """DataLoader worker processes per training process; null: CPUs per process - 1, at most 8."""
    hflip: bool = True
    """Random horizontal flips in training; turn off when mirror images mean something else."""
    min_crop_scale: float = 0.08
    """Smallest area fraction RandomResizedCrop may keep (torchvision's default is 0.08)."""
    vflip: bool = False
    """Random vertical flips: for aerial, microscopy or texture images, where up means nothing."""
    auto_augment: Literal["none", "trivial", "randaugment"] = "none"
    """Policy augmentation on top of crop/flip: TrivialAugmentWide or RandAugment (torchvision v2)."""
    random_erasing: float = 0.0
    """Probability of erasing a random rectangle of each training image (0: off; timm uses 0.25)."""
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    """shuffle: each image once per epoch; balanced: draw classes equally often (imbalanced data)."""
    augment: bool = True
    """false: train on the eval view (resize + center crop) with no random crop, flip or policy;
    train.phases.N.augment sets it per phase."""
    pipeline: Literal["auto", "pil", "cached", "decode"] = "auto"
    """pil: decode and augment every image every epoch in loader workers; cached: decode once to a
    uint8 cache, crop/flip/normalize batched on the device; decode: JPEGs decoded in batches on
    the device every epoch (too big to cache); auto: cached, else decode, else pil."""
    cache_on_device: bool | None = None
    """Hold the whole uint8 training cache in GPU memory (no copy per batch); null: on CUDA when
    it takes under a quarter of the free memory."""
    cache_dir: str | None = None
    """Where the uint8 pixel cache lives; null: $TRAINER_CACHE_DIR or ~/.cache/trainer, /pixels."""
    on_bad_file: Literal["skip", "error"] = "skip"
    """skip: leave out files that do not decode (listed in RUN_DIR/bad_files.csv); error: stop first."""
    check_images: bool = True
    """Fully decode every image once before training (in parallel, cached by size and mtime)."""
    max_image_pixels: int | None = None
    """Images with more pixels are bad files (decompression bombs); null: 360,000,000."""

    def __post_init__(self) -> None:
        check_numbers(self)
        if len(self.split) != 3:
            raise ConfigError(
                f"split: expected three ratios >= 0 (train, val, test), got {self.split}"
            )
        if abs(sum(self.split) - 1.0) > 1e-6 or self.split[0] <= 0:
            raise ConfigError(f"split: ratios must sum to 1 with train > 0, got {self.split}")


@dataclass
class ModelConfig:
    name: str = "torchvision/resnet50"
    """Backbone as SOURCE/NAME: torchvision/resnet50, torchvision/resnext101_32x8d, timm/<name>."""
    pretrained: bool | str = True
    """true: the library's ImageNet weights (cache or download); false: random; or a .safetensors/.pth path."""
    head: Literal["linear", "mlp"] = "linear"
    """Classifier head on the backbone features: linear (Xavier init) or mlp (one hidden layer)."""
    head_hidden: int = 512
    """Hidden width of the mlp head (the ResNet-50 recipe uses 128)."""
    head_dropout: float = 0.0
    """Dropout before the head's last linear layer."""

    def __post_init__(self) -> None:
        source, _, arch = self.name.partition("/")
        if source not in ("torchvision", "timm") or not arch:
            raise ConfigError(
                f"name: expected 'torchvision/<arch>' or 'timm/<arch>', got {self.name!r}"
            )
        check_numbers(self)


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    """sgd (with momentum), adam or adamw."""
    lr: float = 1e-4
    """Learning rate of the backbone, at the peak of the schedule."""
    head_lr_mult: float = 10.0
    """The head's learning rate is lr times this (a fresh head learns faster than the backbone)."""
    weight_decay: float = 0.01
    """Weight decay (L2 for sgd/adam, decoupled for adamw)."""
    momentum: float = 0.9
    """SGD momentum (ignored by adam/adamw)."""
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    """cosine: linear warmup then cosine to 0; step: times gamma every step_epochs; constant."""
    warmup_epochs: float = 0.0
    """Linear warmup length in epochs (may be fractional), for the cosine scheduler."""
    step_epochs: int = 30
    """Step scheduler: multiply the learning rate by gamma every this many epochs."""
    gamma: float = 0.1
    """Step scheduler decay factor."""
    no_decay_norm_bias: bool = True
    """No weight decay on normalization weights and biases (decaying them only hurts)."""
    layer_decay: float = 1.0
    """Layer-wise lr decay: backbone block i of n gets lr x layer_decay^(n - i); 1.0: off (try 0.7)."""
    clip_grad_norm: float | None = None
    """Clip the global gradient norm to this before each update; null: no clipping."""

    def __post_init__(self) -> None:
        check_numbers(self)


@dataclass
class PhaseConfig:
    name: str = "train"
    """Shown in logs and metrics.jsonl (e.g. head, finetune)."""
    epochs: int = 10
    """Epochs in this phase."""
    freeze: Literal["none", "backbone"] = "none"
    """What does not train in this phase: nothing, or the whole backbone (head only)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule of this phase; keys not given here come from the top-level optim."""
    augment: bool | None = None
    """Random crops, flips and policies on this phase's training images; null: data.augment. A
    frozen phase without them can train its head on cached features (train.feature_cache)."""

    def __post_init__(self) -> None:
        check_numbers(self)


@dataclass
class TrainConfig:
    epochs: int | None = None
    """Epochs of a single-phase run: sets the one phase's epochs (shown there); several phases: train.phases.N.epochs."""
    phases: list[PhaseConfig] = field(default_factory=list)
    """Transfer-learning phases run in order; empty or left out: one phase of train.epochs (10) with optim."""
    batch_size: int = 64
    """Images per process per step (the global batch is this x processes x grad_accum_steps)."""
    eval_batch_size: int | None = None
    """Images per process per evaluation step; null: 2 x batch_size."""
    grad_accum_steps: int = 1
    """Steps whose gradients are summed before one optimizer update."""
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    """no, fp16 or bf16; null: what the accelerate config or launcher says."""
    seed: int = 0
    """Seeds weights init, shuffling and augmentation (the split has data.split_seed)."""
    log_every: int = 50
    """Write a train event (loss, lr) to metrics.jsonl every this many optimizer steps."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (0: off; 0.1 is the usual value)."""
    mixup_alpha: float = 0.0
    """MixUp on each batch with Beta(alpha, alpha) mixing (0: off; 0.2 is typical)."""
    cutmix_alpha: float = 0.0
    """CutMix on each batch (0: off; 1.0 is typical); with mixup too, one of the two per batch."""
    class_weights: Literal["none", "balanced"] = "none"
    """balanced: weight the loss of each class by N / (classes x its training images)."""
    ema_decay: float | None = None
    """Keep an exponential moving average of the weights (e.g. 0.999), evaluated each epoch; the better one is kept."""
    freeze_bn: bool = True
    """Keep BatchNorm layers of a frozen backbone in eval mode, so their statistics stay put."""
    sync_bn: bool = False
    """SyncBatchNorm across GPUs under DDP (small per-GPU batches); ignored on CPU and one process."""
    channels_last: bool | None = None
    """NHWC memory format (faster convolutions on tensor cores and with oneDNN on CPUs); null: on
    when training on CUDA or a CPU."""
    compile: bool = False
    """torch.compile the model (first steps slower while it compiles; faster after)."""
    feature_cache: bool | None = None
    """Frozen-backbone phases: compute backbone features once, train the head on them; null: when
    the head's inputs cannot change between epochs (no augmentation, BatchNorm frozen by
    train.freeze_bn, no MixUp/CutMix, no dropout in the backbone)."""
    select_metric: Literal["val_accuracy", "val_loss", "val_balanced_accuracy", "val_macro_f1"] = (
        "val_accuracy"
    )
    """The validation number that picks the best epoch (the model that is kept and tested)."""
    early_stopping_patience: int | None = None
    """End a phase after this many epochs without a better select_metric; null: never."""
    collective_timeout_s: int = 1800
    """Seconds a process waits for the others in a collective before the job fails, naming ranks."""

    def __post_init__(self) -> None:
        check_numbers(self)


@dataclass
class CheckpointConfig:
    enabled: bool = True
    """Save a resumable state under RUN_DIR/checkpoints/ after every epoch (and every_steps)."""
    every_steps: int = 0
    """Also save every this many optimizer updates, mid-epoch; 0: only at epoch ends."""
    keep_last: int = 2
    """How many checkpoints to keep; older ones are deleted only after a newer one is complete."""
    keep_best: bool = True
    """Also keep the checkpoint of the best epoch so far, however old."""
    resume: str = "auto"
    """auto: continue an unfinished run from its newest complete checkpoint; never; or a folder."""
    requeue: bool = True
    """Under Slurm, after SIGUSR1/SIGTERM made the run save and stop: scontrol requeue the job."""

    def __post_init__(self) -> None:
        check_numbers(self)
        if not self.resume:
            raise ConfigError("resume: expected auto, never or a checkpoint folder")


@dataclass
class WandbConfig:
    mode: Literal["disabled", "offline", "online"] = "disabled"
    """disabled (default), offline (files under RUN_DIR/wandb, sync later) or online."""
    project: str = "trainer"
    """W&B project name."""
    entity: str | None = None
    """W&B entity (team or user); null: your default."""
    name: str | None = None
    """Run name shown in W&B; null: the output folder's name."""
    api_key: str | None = None
    """W&B API key; better set WANDB_API_KEY. Never written anywhere: redacted from every file."""


@dataclass
class TrackingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases, through accelerate's trackers, on the main process only."""


@dataclass
class RunConfig:
    output_dir: str = "runs/train"
    """Run folder: config.yaml, metrics.jsonl, summary.json, checkpoints/, model/."""
    overwrite: bool = False
    """Allow writing into an output_dir that already holds a finished run."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the images are and how they are split and augmented."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Backbone, pretrained weights and head."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule: the default of every phase."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Phases, batch sizes, precision, seed."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Resumable checkpoints."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking (metrics.jsonl is always written)."""

    def augments(self, phase: PhaseConfig) -> bool:
        """Whether `phase` trains on augmented images: its own augment, else data.augment."""
        return self.data.augment if phase.augment is None else phase.augment

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            # "" would be the current folder: a run would fill it (or refuse it as "around" data.root)
            raise ConfigError(
                "output_dir: empty; give a folder for the run, e.g. output_dir=runs/photos"
            )
