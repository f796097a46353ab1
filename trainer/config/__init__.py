"""The run configuration: a typed dataclass tree, YAML files and packaged recipes, dotted overrides.

Precedence: dataclass defaults < recipe or YAML file < `key.sub=value` overrides. Every mistake
(unknown key, wrong type, bad value) raises `ConfigError` naming the dotted key, before any work.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

RECIPES_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A user's configuration mistake; the message names the dotted key and what to do."""


@dataclass(frozen=True)
class Range:
    """Where a number of the config may lie; NaN and infinities never do."""

    low: float
    high: float
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False
    why: str = ""  # said after the range when the value is out of it

    def __contains__(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return math.isfinite(x) and above and below

    def describe(self, integer: bool) -> str:
        if integer:
            low = self.low + 1 if self.low_open else self.low
            high = self.high - 1 if self.high_open else self.high
            return f"an integer {int(low)}..{int(high)}"
        left, right = "<" if self.low_open else "<=", "<" if self.high_open else "<="
        return f"a number {self.low:g} {left} x {right} {self.high:g}"


SEED = Range(0, 2**32, high_open=True)  # what numpy and torch's generators accept
COUNT = Range(1, 10**6)
BATCH = Range(1, 2**20)
# Every int and float field of the config, by "Class.field": a new numeric key must be added
# here (the check fails loudly otherwise), and the unit tests feed values just outside each.
RANGES: dict[str, Range] = {
    "DataConfig.split": Range(0, 1),
    "DataConfig.split_seed": SEED,
    "DataConfig.image_size": Range(16, 4096),
    "DataConfig.num_workers": Range(0, 1024),
    "DataConfig.min_crop_scale": Range(0, 1, low_open=True),
    "DataConfig.random_erasing": Range(0, 1),
    "DataConfig.max_image_pixels": Range(1, 2**34),
    "ModelConfig.head_hidden": BATCH,
    "ModelConfig.head_dropout": Range(0, 1, high_open=True),
    "OptimConfig.lr": Range(0, 10, low_open=True),
    "OptimConfig.head_lr_mult": Range(0, 1000, low_open=True),
    "OptimConfig.weight_decay": Range(0, 10),
    "OptimConfig.momentum": Range(0, 1, high_open=True),
    "OptimConfig.warmup_epochs": Range(0, 10**6),
    "OptimConfig.step_epochs": COUNT,
    "OptimConfig.gamma": Range(0, 1, low_open=True),
    "OptimConfig.layer_decay": Range(0, 1, low_open=True),
    "OptimConfig.clip_grad_norm": Range(0, 10**6, low_open=True),
    "PhaseConfig.epochs": COUNT,
    "TrainConfig.epochs": COUNT,
    "TrainConfig.batch_size": Range(
        2,
        2**20,
        why="; BatchNorm cannot normalize a batch of one image per process. To fit memory use a "
        "smaller data.image_size, and train.grad_accum_steps=N for a larger effective batch",
    ),
    "TrainConfig.eval_batch_size": BATCH,
    "TrainConfig.grad_accum_steps": Range(1, 2**16),
    "TrainConfig.seed": SEED,
    "TrainConfig.log_every": Range(1, 10**9),
    "TrainConfig.label_smoothing": Range(0, 1, high_open=True),
    "TrainConfig.mixup_alpha": Range(0, 100),
    "TrainConfig.cutmix_alpha": Range(0, 100),
    "TrainConfig.ema_decay": Range(0, 1, low_open=True, high_open=True),
    "TrainConfig.early_stopping_patience": COUNT,
    "TrainConfig.collective_timeout_s": Range(1, 7 * 86400),
    "CheckpointConfig.every_steps": Range(0, 10**9),
    "CheckpointConfig.keep_last": COUNT,
}


def number_kind(tp: Any) -> tuple[type, bool] | None:
    """(int or float, whether null is allowed) for a numeric annotation, lists of numbers
    included; None for anything else (bool is not a number here)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        kind = number_kind(inner[0]) if len(inner) == 1 else None
        return (kind[0], True) if kind else None
    if typing.get_origin(tp) is list:
        return number_kind(args[0])
    return (tp, False) if tp in (int, float) else None


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
    """false: train on the eval view (resize + center crop) with no random crop, flip or policy."""
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
    """NHWC memory format (faster convolutions on tensor cores); null: on when training on CUDA."""
    compile: bool = False
    """torch.compile the model (first steps slower while it compiles; faster after)."""
    feature_cache: bool | None = None
    """Frozen-backbone phases: compute backbone features once, train the head on them; null: when
    the head's inputs cannot change between epochs (no augmentation, no MixUp/CutMix, no dropout)."""
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

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, str) or not self.output_dir.strip():
            # "" would be the current folder: a run would fill it (or refuse it as "around" data.root)
            raise ConfigError(
                "output_dir: empty; give a folder for the run, e.g. output_dir=runs/photos"
            )


# --------------------------------------------------------------------------- building


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting strings from the command line."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[-1] if len(errors) == 1 else f"{key}: {value!r} fits none of {_type_name(tp)}"
        )
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{key}: expected one of {', '.join(map(str, choices))}; got {value!r}"
            )
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # PyYAML reads "1e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise AssertionError(f"unsupported config annotation {tp!r} at {key}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "|".join(map(str, typing.get_args(tp)))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            hint = difflib.get_close_matches(str(k), names, n=1)
            more = f" (did you mean '{prefix + '.' if prefix else ''}{hint[0]}'?)" if hint else ""
            raise ConfigError(
                f"unknown config key '{key}'{more}; `trainer config --keys` lists them"
            )
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}.{e}" if prefix else str(e)) from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set `a.b.0.c=value` in a nested dict/list tree; list items are addressed by index."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: '{'.'.join(parts[:i])}' has {len(node)} entries")
            part = int(part)
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]


def _default_tree() -> dict:
    return dataclasses.asdict(RunConfig())


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _phases(tree: dict) -> list[dict]:
    train = tree.get("train")
    phases = train.get("phases") if isinstance(train, dict) else None
    if phases is None:
        return []
    if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
        raise ConfigError(f"train.phases: expected a list of mappings, got {phases!r}")
    for n, p in enumerate(phases):
        if not isinstance(p.get("optim") or {}, dict):
            raise ConfigError(f"train.phases.{n}.optim: expected a mapping, got {p['optim']!r}")
    return phases


def _set_epochs(tree: dict, epochs: Any) -> None:
    """train.epochs: the epochs of a single-phase run; kept in the phase, not twice."""
    if epochs is None or not isinstance(tree.get("train"), dict):
        return  # null: not set; a train that is not a mapping is reported by _build
    epochs = _coerce(epochs, int, "train.epochs")
    if epochs not in RANGES["TrainConfig.epochs"]:
        raise ConfigError(f"train.epochs: expected {COUNT.describe(True)}, got {epochs}")
    phases = _phases(tree)
    if not phases:
        phases = tree["train"]["phases"] = [{"name": "train"}]
    if len(phases) > 1:
        raise ConfigError(
            f"train.epochs: this config has {len(phases)} phases; set each one's epochs "
            "with train.phases.N.epochs=... instead"
        )
    phases[0]["epochs"] = epochs
    tree["train"]["epochs"] = None


def _one_phase_if_empty(tree: dict, epochs: Any) -> None:
    """`train.phases=[]` (e.g. to make a two-phase recipe one phase): one default phase, of
    train.epochs whether that was given before or after it (it used to fall back to 10)."""
    train = tree.get("train")
    if isinstance(train, dict) and train.get("phases") == []:
        train["phases"] = [{"name": "train"}]
        _set_epochs(tree, epochs)


def _fill_phases(tree: dict) -> None:
    """Give every phase the top-level optim keys it does not set itself; one phase if none."""
    train = tree.setdefault("train", {})
    if not isinstance(train, dict):
        return  # _build reports the type error
    if not _phases(tree):
        train["phases"] = [{"name": "train"}]
    root_optim = tree.get("optim") or {}
    if not isinstance(root_optim, dict):
        raise ConfigError(f"optim: expected a mapping, got {root_optim!r}")
    train["phases"] = [
        {**p, "optim": {**root_optim, **(p.get("optim") or {})}} for p in _phases(tree)
    ]
    if train.get("epochs") is not None:
        _set_epochs(tree, train["epochs"])


def _apply_override(tree: dict, key: str, value: Any) -> None:
    """Overrides come last and win: `optim.X` sets X in every phase, `train.epochs` the one phase."""
    if key == "optim" and isinstance(value, dict):
        for sub, v in value.items():
            _apply_override(tree, f"optim.{sub}", v)
        return
    if key == "train.epochs":
        _set_epochs(tree, value)
        return
    _set_dotted(tree, key, value)
    if key.startswith("optim."):
        for n in range(len(_phases(tree))):
            _set_dotted(tree, f"train.phases.{n}.{key}", value)


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value` -> (key.sub, YAML-parsed value); `key=` gives an empty string."""
    key, sep, raw = text.partition("=")
    if not sep and ("/" in text or Path(text).expanduser().is_dir()):
        raise ConfigError(
            f"{text!r} is not a key=value override; for the image folder write data.root={text}"
        )
    if not sep or not key or any(c.isspace() for c in key):
        raise ConfigError(f"bad override {text!r}: expected key.sub=value (e.g. train.epochs=3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def find_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a packaged recipe (`trainer recipes` lists them)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return packaged
    if path.is_dir():
        raise ConfigError(
            f"--config {name_or_path}: is a folder; give a YAML file or a recipe name "
            f"(trainer recipes)"
        )
    raise ConfigError(
        f"--config {name_or_path!r}: no such file, and no packaged recipe of that name "
        f"(recipes: {', '.join(list_recipes())})"
    )


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; --config takes a YAML file") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return tree


def load_config(config: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults < recipe/YAML file < overrides, validated into a RunConfig."""
    tree = _default_tree()
    tree["train"]["phases"] = []  # phases come from the file, or one is made from train.epochs
    if config:
        tree = _deep_merge(tree, load_yaml(find_recipe(config)))
    train = tree.get("train")
    epochs = train.get("epochs") if isinstance(train, dict) else None  # the latest given
    _fill_phases(tree)
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(tree, key, value)
        epochs = value if key == "train.epochs" else epochs
        _one_phase_if_empty(tree, epochs)
    _fill_phases(tree)  # phases given whole on the command line get the top-level optim too
    return _build(RunConfig, tree, "")


# Config fields that hold secrets: written as null wherever a config goes (config.yaml, checkpoints,
# the tracker). Null rather than "***" so that a reloaded config falls back to the environment
# instead of using "***" as a key.
SECRET_FIELDS = ("api_key",)


def to_dict(cfg: Any) -> dict:
    """The config as plain data, secrets left out: safe to write or send anywhere."""
    return _without_secrets(dataclasses.asdict(cfg))


def _without_secrets(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: None if k in SECRET_FIELDS else _without_secrets(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_without_secrets(v) for v in tree]
    return tree


def dump_yaml(cfg: RunConfig) -> str:
    """config.yaml's text: the resolved config, secrets left out (to_dict)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def flat_dict(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{'data.root': ..., 'train.phases.0.epochs': ...}: for trackers that want flat keys."""
    out: dict[str, Any] = {}
    items = cfg.items() if isinstance(cfg, dict) else enumerate(cfg)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)) and v:
            out.update(flat_dict(v, key + "."))
        else:
            out[key] = v
    return out


@functools.cache
def _field_docs() -> dict[tuple[str, str], str]:
    """Docstrings written under each dataclass field, read from this file's source."""
    docs = {}
    tree = ast.parse(inspect.getsource(inspect.getmodule(_field_docs)))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for a, b in zip(body, body[1:]):
                if (
                    isinstance(a, ast.AnnAssign)
                    and isinstance(a.target, ast.Name)
                    and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant)
                    and isinstance(b.value.value, str)
                ):
                    docs[(node.name, a.target.id)] = " ".join(b.value.value.split())
    return docs


def describe_keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, doc) for every leaf field, for `trainer config --keys`."""
    rows = []
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        doc = _field_docs().get((cls.__name__, f.name), "")
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_keys(tp, key + "."))
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            rows.append((key, "list", "[]", doc))
            rows.extend(describe_keys(typing.get_args(tp)[0], key + ".N."))
        else:
            rows.append((key, _type_name(tp), repr(getattr(default, f.name)), doc))
    return rows
