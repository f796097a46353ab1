"""The model folder a run leaves behind: model.safetensors + config.json, saved whole, loaded alone.

config.json holds the architecture, the class names, the preprocessing and, once training has
fitted it on val, the calibration (a softmax temperature): all that `trainer predict`, `eval` and
`export` need, with no network and no training config. Loading checks every
field and the weights themselves, so a hand-edited or damaged folder is a one-line ModelError.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode

from trainer.config import RANGES, ConfigError, ModelConfig
from trainer.data.transforms import Preprocessing
from trainer.errors import writing
from trainer.files import apply_umask, write_text_atomic
from trainer.model.classifier import Classifier, build_model
from trainer.model.safeload import ModelError, load_safetensors

MODEL_FORMAT = "trainer-model"
MODEL_FORMAT_VERSION = 1
REWRITE = "was it edited by hand? Use the config.json the training run wrote"
# What training can write: data.image_size's range; a resize up to twice the crop.
IMAGE_SIZES = (RANGES["DataConfig.image_size"].low, RANGES["DataConfig.image_size"].high)
RESIZE_SIZES = (IMAGE_SIZES[0], 2 * IMAGE_SIZES[1])
# What a temperature fitted on val can be (calibration.fit_temperature searches inside it).
TEMPERATURES = (0.01, 100.0)


def save_model_folder(
    model: Classifier,
    folder: Path,
    cfg: ModelConfig,
    class_names: list[str],
    pre: Preprocessing,
    extra: dict[str, Any] | None = None,
) -> None:
    """model.safetensors + config.json (architecture, class names, preprocessing, `extra`).

    Written to a sibling folder and renamed into place, so a reader never sees half a model.
    """
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with writing(tmp / "model.safetensors"):
        save_file(state, tmp / "model.safetensors", metadata={"format": MODEL_FORMAT})
    meta = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "architecture": {
            "name": cfg.name,
            "head": cfg.head,
            "head_hidden": cfg.head_hidden,
            "head_dropout": cfg.head_dropout,
        },
        "num_classes": len(class_names),
        "class_names": class_names,
        "preprocessing": pre.to_dict(),
        **(extra or {}),
    }
    with writing(tmp / "config.json"):
        (tmp / "config.json").write_text(
            json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8"
        )
    apply_umask(tmp)  # safetensors writes 0600; a model folder is meant to be shared
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_model_folder(folder: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild the classifier from a model folder alone (no network, no training config), in
    eval mode, with its checked config.json."""
    folder = Path(folder)
    meta_path, weights_path = folder / "config.json", folder / "model.safetensors"
    if not _is_model_folder(folder):
        inner = folder / "model"  # a run folder given instead of RUN_DIR/model
        hint = f"; did you mean {inner}?" if _is_model_folder(inner) else ""
        raise ModelError(
            f"{str(folder)!r} is not a model folder: expected config.json and model.safetensors "
            f"(a training run writes one to RUN_DIR/model){hint}"
        )
    meta = read_model_meta(meta_path)
    arch = meta["architecture"]
    try:
        cfg = ModelConfig(
            name=arch["name"],
            pretrained=False,
            head=arch["head"],
            head_hidden=arch["head_hidden"],
            head_dropout=arch["head_dropout"],
        )
    except (ConfigError, TypeError) as e:
        raise ModelError(f"{meta_path}: architecture.{e}; {REWRITE}") from None
    model, _ = build_model(cfg, meta["num_classes"])
    state = load_safetensors(weights_path)
    _check_finite(state, weights_path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing/unexpected keys or shapes: not this folder's weights
        raise ModelError(
            f"{weights_path} does not fit the architecture in {meta_path}: "
            f"{str(e).splitlines()[-1].strip()}"
        ) from None
    model.eval()
    return model, meta


def load_for_inference(folder: str | Path) -> tuple[Classifier, dict[str, Any], Preprocessing]:
    """load_model_folder and the preprocessing its images need: what eval, predict and export
    start from."""
    model, meta = load_model_folder(folder)
    return model, meta, Preprocessing.from_dict(meta["preprocessing"])


def write_calibration(folder: Path, calibration: dict[str, Any]) -> None:
    """Add the fitted calibration ({"temperature": T, ...}) to the folder's config.json, which
    is replaced whole (the weights are untouched)."""
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    meta["calibration"] = calibration
    write_text_atomic(folder / "config.json", json.dumps(meta, indent=2, ensure_ascii=False))


def temperature(meta: dict[str, Any]) -> float:
    """The softmax temperature predict, eval and export apply: the fitted one, else 1 (a model
    trained without a val split, or saved before calibration existed)."""
    return float(meta.get("calibration", {}).get("temperature", 1.0))


def _is_model_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """NaN/inf weights: bytes damaged under an intact header (or a run that diverged) would
    otherwise give every image probability nan. One pass over the tensors (ms for a ResNet)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(
                f"{path}: holds non-finite weights (NaN or inf in {name}; damaged?); "
                "copy it again or retrain"
            )


def read_model_meta(meta_path: Path) -> dict[str, Any]:
    """A model folder's config.json, checked: every mistake names the file and the key."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{meta_path}: not valid JSON ({e}); {REWRITE}") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ModelError(f"{meta_path} is not a {MODEL_FORMAT} config")
    arch, names = meta.get("architecture"), meta.get("class_names")
    if not isinstance(arch, dict) or not {"name", "head", "head_hidden", "head_dropout"} <= set(
        arch
    ):
        raise ModelError(
            f"{meta_path}: architecture must hold name, head, head_hidden and head_dropout; "
            f"{REWRITE}"
        )
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ModelError(f"{meta_path}: class_names must be a list of names; {REWRITE}")
    if meta.get("num_classes") != len(names):
        raise ModelError(
            f"{meta_path}: num_classes is {meta.get('num_classes')!r} but class_names has "
            f"{len(names)} names; {REWRITE}"
        )
    try:
        pre = Preprocessing.from_dict(meta["preprocessing"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ModelError(
            f"{meta_path}: preprocessing is incomplete or wrong ({type(e).__name__}: {e}); {REWRITE}"
        ) from None
    if arch["head"] not in ("linear", "mlp"):
        raise ModelError(f"{meta_path}: architecture.head must be linear or mlp; {REWRITE}")
    _check_preprocessing(pre, meta_path)
    _check_calibration(meta.get("calibration", {}), meta_path)
    return meta


def _check_calibration(calibration: Any, meta_path: Path) -> None:
    t = calibration.get("temperature", 1.0) if isinstance(calibration, dict) else None
    ok = (
        isinstance(t, (int, float)) and math.isfinite(t) and TEMPERATURES[0] <= t <= TEMPERATURES[1]
    )
    if not ok:
        raise ModelError(
            f"{meta_path}: calibration.temperature must be a number in "
            f"[{TEMPERATURES[0]}, {TEMPERATURES[1]}]; {REWRITE}"
        )


def _check_preprocessing(pre: Preprocessing, meta_path: Path) -> None:
    """An interpolation torchvision knows and numbers training could have written."""
    try:
        InterpolationMode(pre.interpolation)
    except ValueError:
        raise ModelError(
            f"{meta_path}: preprocessing.interpolation {pre.interpolation!r} is unknown; {REWRITE}"
        ) from None
    numbers = [pre.image_size, pre.resize_size, *pre.mean, *pre.std]
    finite = all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers)
    sizes_ok = (
        IMAGE_SIZES[0] <= pre.image_size <= IMAGE_SIZES[1]
        and RESIZE_SIZES[0] <= pre.resize_size <= RESIZE_SIZES[1]
    )
    if not finite or len(pre.mean) != 3 or len(pre.std) != 3 or min(pre.std) <= 0 or not sizes_ok:
        raise ModelError(f"{meta_path}: preprocessing holds impossible numbers; {REWRITE}")
