"""Export a model folder to ONNX or TorchScript, with a parity check against PyTorch.

The exported folder keeps config.json (class names, preprocessing) and adds export.json with the
measured parity, so it can be handed to someone who does not use PyTorch.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image

from trainer.data import walk
from trainer.data.badfiles import decode_checked
from trainer.data.transforms import Preprocessing, eval_transform
from trainer.errors import writing
from trainer.files import check_replaceable, current_umask, write_text_atomic
from trainer.model.export_preprocessing import (
    FILTER_SUPPORT,
    PROBABILITY_ATOL,
    WithPreprocessing,
    example_image,
    preprocessing_parity,
)
from trainer.model.folder import load_for_inference, temperature

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
# Max |logit difference| allowed between PyTorch and the export, on fp32 CPU.
PARITY_ATOL = 1e-3
# How many of the --images files the export with preprocessing is checked on.
PARITY_FILES = 16


class ExportError(ValueError):
    """The export cannot be made as asked (a user's mistake: exit 2); the message says what to do."""


class ParityError(ExportError):
    """The export was written but its logits differ from PyTorch's (a failure: exit 1)."""


def image_files(image_paths: list[str]) -> list[tuple[str, bool]]:
    """The files of --images, each with whether a folder held it: files as given, folders
    expanded to the images below them."""
    files = []
    for p in image_paths:
        if not Path(p).is_dir():
            files.append((p, False))
            continue
        found = walk.list_images(Path(p))
        if not found:
            raise ExportError(f"--images {p}: no images in this folder")
        files.extend((f, True) for f in found)
    return files


def readable_images(
    image_paths: list[str], n: int, skipped: list[tuple[str, str]]
) -> list[Image.Image]:
    """The first `n` images of --images that decode, as RGB. Decoded as the bad-file check
    decodes (a file over the pixel limit is refused from its header, not decoded: GBs for a
    PNG header of 20000 x 20000). A folder's file that does not decode is skipped, added to
    `skipped` as (path, reason), as predict skips it; a file given by name, or no image that
    decodes, is an ExportError."""
    images: list[Image.Image] = []
    for path, in_folder in image_files(image_paths):
        if len(images) == n:
            break
        rgb, reason = decode_checked(path)
        if rgb is not None:
            images.append(rgb)
        elif in_folder:
            skipped.append((path, str(reason)))
        else:
            raise ExportError(
                f"--images {path}: not a readable image ({reason}); "
                "give image files or folders of them"
            )
    if image_paths and not images:
        shown = "; ".join(f"{p}: {reason}" for p, reason in skipped[:3])
        more = " ..." if len(skipped) > 3 else ""
        raise ExportError(f"--images: none of the images can be read ({shown}{more})")
    return images


def parity_inputs(
    pre: Preprocessing, image_paths: list[str], skipped: list[tuple[str, str]], n: int = 8
) -> tuple[torch.Tensor, str]:
    """Real images preprocessed as predict does, or random ones when none are given."""
    images = readable_images(image_paths, n, skipped)
    if images:
        transform = eval_transform(pre)
        batch = torch.stack([transform(img) for img in images])
        return batch, f"{len(batch)} real images"
    generator = torch.Generator().manual_seed(0)
    return torch.randn(
        n, 3, pre.image_size, pre.image_size, generator=generator
    ), f"{n} random inputs"


def _check_out(out: Path) -> None:
    """Write only into a new or empty folder, or over an earlier export (never over other files:
    `--out RUN_DIR/model` would otherwise replace the model's own config.json)."""
    check_replaceable(
        out, "--out", lambda d: (d / "export.json").is_file(), "an earlier export", folder=True
    )


def _export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    names: tuple[str, str] = ("pixel_values", "logits"),
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    kwargs: dict[str, Any] = {
        "input_names": [names[0]],
        "output_names": [names[1]],
        "dynamic_axes": dynamic_axes or {names[0]: {0: "batch"}, names[1]: {0: "batch"}},
        "opset_version": ONNX_OPSET,
    }
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript-based exporter: no onnxscript needed, fast
    torch.onnx.export(model, (example,), str(path), **kwargs)


def _onnx_session(path: Path) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "the ONNX parity check needs onnxruntime: pip install 'trainer[export]'"
        ) from None
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    session = _onnx_session(path)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def export_model(
    model_dir: str | Path,
    fmt: str,
    out_dir: str | Path,
    image_paths: list[str],
    with_preprocessing: bool = False,
) -> dict[str, Any]:
    """Write OUT_DIR/model.onnx or model.pt + config.json + export.json; raise if parity fails.

    with_preprocessing: an ONNX model from a uint8 image of any size to calibrated probabilities,
    checked against predict's path on the real image files of image_paths (required).
    export.json's parity names the files of image_paths' folders skipped as unreadable."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if with_preprocessing and fmt != "onnx":
        raise ExportError("--with-preprocessing: only with --format onnx")
    out = Path(out_dir)
    _check_out(out)
    model, meta, pre = load_for_inference(model_dir)
    model = model.float().eval()
    skipped: list[tuple[str, str]] = []
    with torch.no_grad():
        if with_preprocessing:
            result, failure = _export_with_preprocessing(
                model, meta, pre, image_paths, out, skipped
            )
        else:
            result, failure = _export_plain(model, meta, pre, fmt, image_paths, out, skipped)
    result["parity"]["skipped"] = [{"path": p, "reason": reason} for p, reason in skipped]
    target = out / result["file"]
    with writing(out / "config.json"):
        shutil.copyfile(Path(model_dir) / "config.json", out / "config.json")
    write_text_atomic(out / "export.json", json.dumps(result, indent=2))
    for path in (target, out / "config.json"):  # as a plain open() would: 0644 under umask 022
        os.chmod(path, 0o666 & ~current_umask())
    if failure:
        raise ParityError(f"{target}: {failure}")
    return result


def _export_plain(
    model: torch.nn.Module,
    meta: dict[str, Any],
    pre: Preprocessing,
    fmt: str,
    image_paths: list[str],
    out: Path,
    skipped: list[tuple[str, str]],
) -> tuple[dict[str, Any], str | None]:
    """The model alone, (batch, 3, S, S) float pixels -> logits; (export.json, failure or None)."""
    x, what = parity_inputs(pre, image_paths, skipped)
    out.mkdir(parents=True, exist_ok=True)
    target = out / ("model.onnx" if fmt == "onnx" else "model.pt")
    reference = model(x).numpy()
    with writing(target):
        if fmt == "onnx":
            _export_onnx(model, x[:1], target)
        else:
            torch.jit.save(torch.jit.trace(model, x[:1]), str(target))
    if fmt == "onnx":
        exported = _run_onnx(target, x)
    else:
        exported = torch.jit.load(str(target)).eval()(x).numpy()
    diff = float(np.abs(exported - reference).max())
    result = {
        "format": fmt,
        "file": target.name,
        "input": {
            "name": "pixel_values",
            "shape": ["batch", 3, pre.image_size, pre.image_size],
            "dtype": "float32",
        },
        "output": {"name": "logits", "shape": ["batch", len(meta["class_names"])]},
        "parity": {"max_abs_diff": diff, "atol": PARITY_ATOL, "inputs": what},
        "same_top1": bool((exported.argmax(1) == reference.argmax(1)).all()),
        "torch_version": torch.__version__,
    }
    failed = diff > PARITY_ATOL or not result["same_top1"]
    return result, (
        f"logits differ from PyTorch by {diff:.3g} (allowed {PARITY_ATOL}) on {what}"
        if failed
        else None
    )


def _preprocessing_images(
    pre: Preprocessing, image_paths: list[str], skipped: list[tuple[str, str]]
) -> list[Image.Image]:
    """The parity images of --with-preprocessing (`readable_images`), after checking that the
    graph can do this model's preprocessing."""
    if pre.interpolation not in FILTER_SUPPORT:
        raise ExportError(
            f"--with-preprocessing: the model resizes with {pre.interpolation!r}; "
            f"only {' and '.join(FILTER_SUPPORT)} are built into the graph: export without it"
        )
    if pre.resize_size < pre.image_size:
        raise ExportError(
            f"--with-preprocessing: the model's center crop ({pre.image_size} px) is larger "
            f"than its resize ({pre.resize_size} px) and would pad: export without it"
        )
    if not image_paths:
        raise ExportError(
            "--with-preprocessing: the parity check runs on real image files: "
            "give --images FILES_OR_FOLDERS (photos of different sizes)"
        )
    return readable_images(image_paths, PARITY_FILES, skipped)


def _export_with_preprocessing(
    model: torch.nn.Module,
    meta: dict[str, Any],
    pre: Preprocessing,
    image_paths: list[str],
    out: Path,
    skipped: list[tuple[str, str]],
) -> tuple[dict[str, Any], str | None]:
    """(1, H, W, 3) uint8 RGB -> (1, C) calibrated probabilities, checked against predict's path
    on real image files; (export.json, failure or None)."""
    images = [np.asarray(img) for img in _preprocessing_images(pre, image_paths, skipped)]
    t = temperature(meta)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "model.onnx"
    names = ("image", "probabilities")
    with writing(target):
        module = WithPreprocessing(model, pre, t).eval()
        _export_onnx(
            module, example_image(pre), target, names, {"image": {1: "height", 2: "width"}}
        )
    parity = preprocessing_parity(model, pre, t, images, _onnx_session(target))
    result = {
        "format": "onnx",
        "file": target.name,
        "with_preprocessing": True,
        "input": {"name": "image", "shape": [1, "height", "width", 3], "dtype": "uint8"},
        "output": {"name": "probabilities", "shape": [1, len(meta["class_names"])]},
        "temperature": t,
        "parity": parity,
        "same_top1": parity.pop("same_top1"),
        "torch_version": torch.__version__,
        "pillow_version": PIL.__version__,  # the resize in the graph is this Pillow's
    }
    diff, what = parity["max_abs_diff"], parity["inputs"]
    failed = diff > PROBABILITY_ATOL or not result["same_top1"]
    return result, (
        f"probabilities differ from trainer predict's by {diff:.3g} (allowed "
        f"{PROBABILITY_ATOL:g}) or a top-1 label changed, on {what}"
        if failed
        else None
    )
