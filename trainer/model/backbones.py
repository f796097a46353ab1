"""Where a backbone comes from: torchvision or timm by name, its pretrained weights, its preprocessing.

Each builder returns (backbone without its ImageNet classifier, feature size, Preprocessing).
Pretrained weights come from the library's cache (or a download), or from a file the user names;
any file is read without running code (safeload).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.data.transforms import IMAGENET, Preprocessing
from trainer.errors import WRITE_ERRNOS
from trainer.model.safeload import ModelError, load_safetensors, load_torch_weights
from trainer.model.weights import import_timm, offline, torchvision_cache

# Auxiliary classifiers of Inception v3 / GoogLeNet in pretrained files; built without them.
AUX_HEADS = ("AuxLogits.", "aux1.", "aux2.")


def build_backbone(name: str, pretrained: bool | str) -> tuple[nn.Module, int, Preprocessing]:
    """`torchvision/<arch>` or `timm/<arch>` (model.name) with model.pretrained's weights."""
    source, _, arch = name.partition("/")
    if source == "torchvision":
        return torchvision_backbone(arch, pretrained)
    return timm_backbone(arch, pretrained)


# --------------------------------------------------------------------------- torchvision


def torchvision_backbone(arch: str, pretrained: bool | str) -> tuple[nn.Module, int, Preprocessing]:
    """torchvision.models' `arch` with its last linear layer replaced by an identity; weights
    from torchvision's cache (pretrained=True) or a file; preprocessing of its ImageNet weights."""
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


def _download_torchvision_weights(arch: str, weights_enum: Any) -> dict[str, torch.Tensor]:
    """From torchvision's cache, else downloaded into it; offline, an error that says how to
    bring the file over."""
    filename = os.path.basename(weights_enum.url)
    cached = torchvision_cache() / filename
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
    if offline():
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


def timm_backbone(arch: str, pretrained: bool | str) -> tuple[nn.Module, int, Preprocessing]:
    """timm's `arch` without its classifier (pooled features); weights from the Hugging Face
    cache or hub (pretrained=True) or a file; preprocessing from its pretrained config."""
    try:
        timm = import_timm()
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
    return model, model.num_features, _timm_preprocessing(model)


def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    size = int(cfg["input_size"][-1])
    return Preprocessing(
        image_size=size,
        resize_size=round(size / cfg.get("crop_pct", 0.875)),
        mean=tuple(float(x) for x in cfg["mean"]),
        std=tuple(float(x) for x in cfg["std"]),
        interpolation=cfg.get("interpolation", "bilinear")
        if cfg.get("interpolation") in ("bilinear", "bicubic")
        else "bilinear",
    )


# --------------------------------------------------------------------------- a user's weights file


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
