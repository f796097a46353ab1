"""Pretrained weights for machines without internet: see what is cached, fetch on one that has it.

torchvision weights live in $TORCH_HOME/hub/checkpoints (where `model.pretrained=true` looks);
timm weights in the Hugging Face cache ($HF_HOME/hub). `--to DIR` writes a plain weights file
instead, for `model.pretrained=DIR/FILE` on the compute nodes.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from types import ModuleType

import torch

from trainer.errors import WRITE_ERRNOS, writing
from trainer.model.safeload import ModelError

LOCAL_ERRNOS = WRITE_ERRNOS | {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def offline() -> bool:
    """TRAINER_OFFLINE or HF_HUB_OFFLINE set (and not 0): fail fast instead of trying the network."""
    return any(
        os.environ.get(v, "") not in ("", "0") for v in ("TRAINER_OFFLINE", "HF_HUB_OFFLINE")
    )


def import_timm() -> ModuleType:
    """timm (ImportError when not installed), imported without the `import wandb` that its
    utils try for a logger of timm's own scripts, which trainer never calls: 0.7 s of every
    process that builds a timm model. A run that tracks to W&B imports wandb itself, later."""
    if "timm" in sys.modules or "wandb" in sys.modules:
        import timm

        return timm
    sys.modules["wandb"] = None  # `import wandb` now raises ImportError, which timm catches
    try:
        import timm
    finally:
        del sys.modules["wandb"]
    return timm


def torchvision_cache() -> Path:
    """Where torchvision keeps its downloaded weights (and `model.pretrained=true` looks)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """Where huggingface_hub keeps timm's downloaded weights."""
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _torchvision_files() -> dict[str, str]:
    """Weights file name -> torchvision/arch, for every arch with ImageNet weights."""
    import torchvision

    files = {}
    for arch in torchvision.models.list_models(module=torchvision.models):
        try:
            enum = torchvision.models.get_model_weights(arch)
        except (ValueError, KeyError):
            continue
        for weights in enum:
            files.setdefault(os.path.basename(weights.url), f"torchvision/{arch}")
    return files


def list_cached() -> list[tuple[str, str, int]]:
    """(model name, file, bytes) of every pretrained file found offline."""
    rows = []
    names = _torchvision_files()
    cache = torchvision_cache()
    if cache.is_dir():
        for f in sorted(cache.iterdir()):
            if f.is_file():
                rows.append(
                    (names.get(f.name, "(unknown torchvision file)"), str(f), f.stat().st_size)
                )
    hf_hub = hf_hub_cache()
    if hf_hub.is_dir():
        for d in sorted(hf_hub.glob("models--timm--*")):
            files = [
                f for f in d.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin")
            ]
            for f in files:
                rows.append(
                    (f"timm/{d.name.removeprefix('models--timm--')}", str(f), f.stat().st_size)
                )
    return rows


def download(name: str, to: str | None = None) -> Path:
    """Fetch NAME's pretrained weights into the library cache, or as a file into `to`."""
    if offline():
        raise ModelError(
            "TRAINER_OFFLINE/HF_HUB_OFFLINE is set: unset it on a machine with internet"
        )
    source, _, arch = name.partition("/")
    if source == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(arch).DEFAULT
        except (ValueError, KeyError):
            raise ModelError(f"torchvision has no pretrained weights for {arch!r}") from None
        target = (Path(to) if to else torchvision_cache()) / os.path.basename(weights.url)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                torch.hub.download_url_to_file(weights.url, str(target), progress=True)
            except OSError as e:
                if e.errno in LOCAL_ERRNOS:  # the disk said no, not the network
                    raise OSError(e.errno, e.strerror, str(target)) from None
                raise ModelError(
                    f"could not download {weights.url} ({e}); is this machine online?"
                ) from None
        return target
    if source == "timm":
        try:
            timm = import_timm()
        except ImportError:
            raise ModelError("timm backbones need timm: pip install 'trainer[timm]'") from None
        try:
            model = timm.create_model(arch, pretrained=True, num_classes=0)
        except Exception as e:  # whatever huggingface_hub raises offline
            raise ModelError(f"could not download timm/{arch} ({type(e).__name__}: {e})") from None
        if not to:
            return hf_hub_cache()
        from safetensors.torch import save_file

        target = Path(to) / f"{arch}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        with writing(target):
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, target)
        return target
    raise ModelError(f"expected torchvision/<arch> or timm/<arch>, got {name!r}")
