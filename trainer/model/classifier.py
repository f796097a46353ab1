"""Backbone + head: build by name, load pretrained weights safely, freeze, save/load a model folder."""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms import InterpolationMode

from trainer.config import RANGES, ConfigError, ModelConfig
from trainer.data.transforms import IMAGENET, Preprocessing
from trainer.errors import WRITE_ERRNOS, writing
from trainer.files import apply_umask
from trainer.model.safeload import ModelError, load_safetensors, load_torch_weights

MODEL_FORMAT = "trainer-model"
MODEL_FORMAT_VERSION = 1
# Auxiliary classifiers of Inception v3 / GoogLeNet in pretrained files; built without them.
AUX_HEADS = ("AuxLogits.", "aux1.", "aux2.")


class Classifier(nn.Module):
    """`backbone` maps images to a feature vector; `head` maps features to class logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # backbone features already (frozen phases train the head on cached ones)
            return self.head(x)
        return self.head(self.backbone(x))


def build_head(cfg: ModelConfig, in_features: int, num_classes: int) -> nn.Module:
    """Linear or one-hidden-layer MLP head, Xavier-initialized with zero biases."""
    dropout = [nn.Dropout(cfg.head_dropout)] if cfg.head_dropout > 0 else []
    if cfg.head == "linear":
        head = nn.Sequential(*dropout, nn.Linear(in_features, num_classes))
    else:
        head = nn.Sequential(
            nn.Linear(in_features, cfg.head_hidden),
            nn.ReLU(inplace=True),
            *dropout,
            nn.Linear(cfg.head_hidden, num_classes),
        )
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return head


def build_model(cfg: ModelConfig, num_classes: int) -> tuple[Classifier, Preprocessing]:
    """The backbone named by `cfg.name` with its weights, a fresh head, and its preprocessing."""
    source, _, arch = cfg.name.partition("/")
    if source == "torchvision":
        backbone, dim, pre = _torchvision_backbone(arch, cfg.pretrained)
    else:
        backbone, dim, pre = _timm_backbone(arch, cfg.pretrained)
    return Classifier(backbone, build_head(cfg, dim, num_classes)), pre


# --------------------------------------------------------------------------- torchvision


def _torchvision_backbone(
    arch: str, pretrained: bool | str
) -> tuple[nn.Module, int, Preprocessing]:
    import torchvision

    # Inception/GoogLeNet: no auxiliary classifiers (their outputs would be unused by the loss,
    # which DDP rejects, and train mode would return a tuple).
    # transform_input=True as torchvision sets it for its weights: these nets were trained on
    # (x - 0.5) / 0.5 and re-scale the ImageNet-normalized input themselves.
    kwargs = (
        {"aux_logits": False, "init_weights": True, "transform_input": True}
        if arch in ("inception_v3", "googlenet")
        else {}
    )
    try:
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except ValueError:
        close = difflib.get_close_matches(arch, torchvision.models.list_models(), n=3)
        raise ModelError(
            f"model.name: torchvision has no model {arch!r}"
            + (f"; did you mean {', '.join('torchvision/' + c for c in close)}?" if close else "")
        ) from None
    weights_enum = _torchvision_weights(arch)
    classifier_name = _last_linear_name(model)
    if pretrained is True:
        if weights_enum is None:
            raise ModelError(
                f"model.pretrained: torchvision/{arch} has no pretrained weights; use false or a file"
            )
        state = _download_torchvision_weights(arch, weights_enum)
        _load_backbone_state(model, state, classifier_name, f"torchvision/{arch} ImageNet weights")
    elif isinstance(pretrained, str):
        _load_backbone_state(model, load_weights_file(pretrained), classifier_name, pretrained)
    dim = _replace_module(model, classifier_name, nn.Identity()).in_features
    return model, dim, _torchvision_preprocessing(weights_enum)


def _torchvision_weights(arch: str) -> Any:
    import torchvision

    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError, KeyError):
        return None


def _torchvision_preprocessing(weights_enum: Any) -> Preprocessing:
    if weights_enum is None:
        return IMAGENET
    t = weights_enum.transforms()
    return Preprocessing(
        image_size=int(t.crop_size[0]),
        resize_size=int(t.resize_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )


def _last_linear_name(model: nn.Module) -> str:
    """The ImageNet classifier: the last nn.Linear (resnet 'fc', vgg/efficientnet 'classifier.N', vit 'heads.head')."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no linear classifier to replace")
    return names[-1]


def _replace_module(model: nn.Module, dotted: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def _offline() -> bool:
    return any(
        os.environ.get(v, "") not in ("", "0") for v in ("TRAINER_OFFLINE", "HF_HUB_OFFLINE")
    )


def _download_torchvision_weights(arch: str, weights_enum: Any) -> dict[str, torch.Tensor]:
    filename = os.path.basename(weights_enum.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return load_torch_weights(cached)
    help_text = (
        f"pretrained weights for torchvision/{arch} are not in the cache ({cached}). "
        f"On a machine with internet run `trainer weights download torchvision/{arch}` and copy "
        f"that file here, or download {weights_enum.url} to that path (or set "
        f"TORCH_HOME to a folder holding hub/checkpoints/{filename}); or pass "
        f"model.pretrained=/path/to/weights.pth (or .safetensors); or model.pretrained=false "
        f"to train from scratch"
    )
    if _offline():
        raise ModelError(f"offline mode (TRAINER_OFFLINE/HF_HUB_OFFLINE): {help_text}")
    try:
        # torch.hub unpickles with weights_only=False unless told: a download is a file from
        # elsewhere too.
        return weights_enum.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except OSError as e:  # URLError, socket errors, hash mismatch
        if e.errno in WRITE_ERRNOS:  # the cache's disk is full or read-only: say that instead
            raise OSError(e.errno, e.strerror, str(cached)) from None
        raise ModelError(f"could not download ({e}): {help_text}") from None


# --------------------------------------------------------------------------- timm


def _timm_backbone(arch: str, pretrained: bool | str) -> tuple[nn.Module, int, Preprocessing]:
    try:
        import timm
        from timm.data import resolve_data_config
    except ImportError:
        raise ModelError(
            "model.name: timm backbones need timm: pip install 'trainer[timm]'"
        ) from None
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        raise ModelError(
            f"model.name: timm has no model {arch!r}"
            + (f"; did you mean {', '.join('timm/' + c for c in close)}?" if close else "")
        )
    try:
        # num_classes=0: timm returns pooled features and drops its classifier.
        model = timm.create_model(arch, pretrained=pretrained is True, num_classes=0)
    except Exception as e:  # timm raises whatever huggingface_hub / urllib raise offline
        if pretrained is not True:
            raise
        raise ModelError(
            f"could not get pretrained weights for timm/{arch} ({type(e).__name__}: {e}). On a "
            f"machine with internet run `python -c \"import timm; timm.create_model('{arch}', "
            f'pretrained=True)"` to fill the Hugging Face cache (HF_HOME), or pass '
            f"model.pretrained=/path/to/weights.safetensors, or model.pretrained=false"
        ) from None
    if isinstance(pretrained, str):
        classifier = model.pretrained_cfg.get("classifier", "fc")
        _load_backbone_state(model, load_weights_file(pretrained), classifier, pretrained)
    cfg = resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    pre = Preprocessing(
        image_size=size,
        resize_size=round(size / cfg.get("crop_pct", 0.875)),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=cfg.get("interpolation", "bilinear")
        if cfg.get("interpolation") in ("bilinear", "bicubic")
        else "bilinear",
    )
    return model, model.num_features, pre


# --------------------------------------------------------------------------- weights files


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.pt/.bin with weights_only=True (no code runs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelError(
            f"model.pretrained: weights file {str(path)!r} does not exist "
            "(model.pretrained takes true, false or a weights file path)"
        )
    try:
        state = (
            load_safetensors(path) if path.suffix == ".safetensors" else load_torch_weights(path)
        )
    except ModelError as e:
        raise ModelError(f"model.pretrained: {e}") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"model.pretrained: {path} does not hold a state dict of tensors")
    return state


def _load_backbone_state(model: nn.Module, state: dict, classifier: str, source: str) -> None:
    """Load `state` into the backbone, ignoring its classifier (the head is replaced anyway).

    Accepts plain torchvision/timm state dicts, DDP's 'module.' prefix and this tool's own
    model.safetensors ('backbone.'/'head.' prefixes). Any backbone key left unfilled is an error.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # this tool's own Classifier weights
        state = {
            k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("head.")
        }

    def is_classifier(key: str) -> bool:
        return key == classifier or key.startswith(classifier + ".")

    clean = {k: v for k, v in state.items() if not is_classifier(k) and not k.startswith(AUX_HEADS)}
    # Files from PyTorch < 0.4.1 (torchvision's V1 ImageNet weights among them) have no
    # BatchNorm num_batches_tracked; load_state_dict keeps the module's own value for those.
    own = {
        k
        for k in model.state_dict()
        if not is_classifier(k) and not k.endswith("num_batches_tracked")
    }
    missing = sorted(own - set(clean))
    unexpected = sorted(set(clean) - set(model.state_dict()))
    if missing or unexpected:
        raise ModelError(
            f"model.pretrained: {source} does not fit {type(model).__name__}: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}. Is it the weights of the same architecture as model.name?"
        )
    try:
        model.load_state_dict(clean, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ModelError(
            f"model.pretrained: {source} does not fit: {str(e).splitlines()[-1].strip()}"
        ) from None


# --------------------------------------------------------------------------- freezing


def set_frozen(model: Classifier, freeze: str) -> None:
    """freeze='backbone': only the head trains; 'none': everything trains."""
    for p in model.backbone.parameters():
        p.requires_grad_(freeze != "backbone")
    for p in model.head.parameters():
        p.requires_grad_(True)


def freeze_batchnorm(module: nn.Module) -> None:
    """Put BatchNorm layers in eval mode: a frozen backbone's running statistics then stay put
    (in train mode they would keep moving with no gradient step following them)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- model folder


def save_model_folder(
    model: Classifier,
    folder: Path,
    cfg: ModelConfig,
    class_names: list[str],
    pre: Preprocessing,
    extra: dict[str, Any] | None = None,
) -> None:
    """model.safetensors + config.json (architecture, class names, preprocessing): all predict needs.

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
    """Rebuild the classifier from a model folder alone (no network, no training config)."""
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


REWRITE = "was it edited by hand? Use the config.json the training run wrote"
# What training can write: data.image_size's range; a resize up to twice the crop.
IMAGE_SIZES = (RANGES["DataConfig.image_size"].low, RANGES["DataConfig.image_size"].high)
RESIZE_SIZES = (IMAGE_SIZES[0], 2 * IMAGE_SIZES[1])


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
    return meta
