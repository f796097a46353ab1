"""What the GPU check runs on: the device, the versions, and whether `datasets` imports (every
training run needs it); one line of JSON, read by launch/gpu_check.py's environment step."""

import gc
import importlib
import importlib.metadata as md
import json
import sys

import torch
import torchvision

PACKAGES = (
    "datasets",
    "dill",
    "multiprocess",
    "pyarrow",
    "fsspec",
    "huggingface-hub",
    "wandb",
    "accelerate",
    "timm",
    "safetensors",
    "pillow",
    "numpy",
    "pytest-xdist",
)


def version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def datasets_error() -> str | None:
    """Why `import datasets` fails (missing, or a pyarrow/fsspec it cannot work with), or None."""
    try:
        importlib.import_module("datasets")
    except Exception as e:  # noqa: BLE001 - any reason is worth reporting
        return f"{type(e).__name__}: {e}"
    return None


def main() -> None:
    cuda = torch.cuda.is_available()
    found = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda_available": cuda,
        "cuda": torch.version.cuda,
        "device_name": torch.cuda.get_device_name() if cuda else None,
        "bf16_supported": cuda and torch.cuda.is_bf16_supported(),
        "datasets_error": datasets_error(),
        "packages": {name: version(name) for name in PACKAGES},
    }
    print(json.dumps(found))


if __name__ == "__main__":
    main()
    gc.freeze()  # the exit skips collecting what torch made (as trainer.cli.command): ~1.5 s
