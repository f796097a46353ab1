"""Reading weights from files someone handed us, without running code from them.

A `.pth`/`.pt`/`.bin` file is a pickle, and unpickling can call any function (`os.system` among
them). So weights come only from safetensors (tensors and a JSON header, nothing executable) or
from `torch.load(weights_only=True)`, whose restricted unpickler refuses every global that is not
a tensor, a container or a number. Both failures become one-line errors naming the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class ModelError(ValueError):
    """The model cannot be built or its weights cannot be loaded; the message says what to do.

    Defined here, the lowest module that raises it (a WeightsFileError is one), so that every
    module reading weights shares it. The CLI turns it into exit code 2 with its one-line message.
    """


class WeightsFileError(ModelError):
    """A weights file that is damaged, truncated, or would run code when loaded."""


def load_safetensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file; a damaged or truncated one is a WeightsFileError."""
    path = _existing(path)
    try:
        return load_file(path, device=device)
    except (SafetensorError, OSError, ValueError) as e:
        # A cut-off copy fails in the header check ("file not fully covered"), before any read.
        raise WeightsFileError(
            f"damaged or truncated safetensors file {path} ({_first_line(e)}); "
            f"copy or save it again"
        ) from None


def load_torch_weights(path: str | Path) -> Any:
    """torch.load(path, weights_only=True) on the CPU, with errors a user can act on.

    A pickle that names a function or class outside torch's allow-list (the way a file that runs
    code works) is refused without running anything.
    """
    path = _existing(path)
    if not _looks_like_torch_file(path):
        raise WeightsFileError(
            f"{path}: not a weights file (.safetensors or .pth); give the file the weights were "
            "saved to"
        )
    try:
        with warnings.catch_warnings():
            # Protocol-4 pickles load fine; torch's warning about them is noise here.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise WeightsFileError(_torch_load_message(path, e)) from None


def _looks_like_torch_file(path: Path) -> bool:
    """What torch.save writes starts like this: a zip archive (since torch 1.6), a pickle
    (legacy format, protocol 2+) or a tar archive (the oldest). Anything else (an image, a
    text file) would only give the unpickler's 'Unsupported operand 80'."""
    with open(path, "rb") as f:
        head = f.read(512)
    return (
        head[:4] in (b"PK\x03\x04", b"PK\x05\x06")  # zip; an empty zip starts with the end record
        or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))
        or head[257:262] == b"ustar"
    )


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return path


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _torch_load_message(path: Path, error: Exception) -> str:
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        # torch's text starts with advice to retry with weights_only=False: exactly what must not
        # happen with a file from elsewhere. Keep only the line saying what it refused.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "GLOBAL" in line or "Unsupported" in line),
            lines[-1] if lines else "",
        )
        return (
            f"refused to load {path}: it is not a plain weights file that loads with "
            f"weights_only=True (it would run code or build objects: {reason}). Save the "
            f"weights as a state_dict of tensors, or as .safetensors"
        )
    if isinstance(error, (RuntimeError, EOFError, OSError)):
        return (
            f"damaged or truncated weights file {path} ({type(error).__name__}: "
            f"{_first_line(error)}); copy or save it again"
        )
    return f"cannot load weights file {path} ({type(error).__name__}: {_first_line(error)})"
