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
import torch

from trainer.data import walk
from trainer.data.transforms import Preprocessing, eval_transform, load_rgb
from trainer.errors import writing
from trainer.files import check_replaceable, current_umask, write_text_atomic
from trainer.model.folder import load_for_inference

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
# Max |logit difference| allowed between PyTorch and the export, on fp32 CPU.
PARITY_ATOL = 1e-3


class ExportError(ValueError):
    """The export cannot be made as asked (a user's mistake: exit 2); the message says what to do."""


class ParityError(ExportError):
    """The export was written but its logits differ from PyTorch's (a failure: exit 1)."""


def parity_inputs(
    pre: Preprocessing, image_paths: list[str], n: int = 8
) -> tuple[torch.Tensor, str]:
    """Real images preprocessed as predict does, or random ones when none are given."""
    files = []
    for p in image_paths:
        found = walk.list_images(Path(p)) if Path(p).is_dir() else [p]
        if not found:
            raise ExportError(f"--images {p}: no images in this folder")
        files.extend(found)
    if files:
        transform = eval_transform(pre)
        batch = torch.stack([_load_image(transform, f) for f in files[:n]])
        return batch, f"{len(batch)} real images"
    generator = torch.Generator().manual_seed(0)
    return torch.randn(
        n, 3, pre.image_size, pre.image_size, generator=generator
    ), f"{n} random inputs"


def _load_image(transform: Any, path: str) -> torch.Tensor:
    try:
        return transform(load_rgb(path))
    except (OSError, ValueError, SyntaxError) as e:  # what Pillow raises for missing/broken files
        raise ExportError(
            f"--images {path}: not a readable image ({type(e).__name__}: {e}); "
            "give image files or folders of them"
        ) from None


def _check_out(out: Path) -> None:
    """Write only into a new or empty folder, or over an earlier export (never over other files:
    `--out RUN_DIR/model` would otherwise replace the model's own config.json)."""
    check_replaceable(
        out, "--out", lambda d: (d / "export.json").is_file(), "an earlier export", folder=True
    )


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    kwargs: dict[str, Any] = {
        "input_names": ["pixel_values"],
        "output_names": ["logits"],
        "dynamic_axes": {"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
        "opset_version": ONNX_OPSET,
    }
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript-based exporter: no onnxscript needed, fast
    torch.onnx.export(model, (example,), str(path), **kwargs)


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "the ONNX parity check needs onnxruntime: pip install 'trainer[export]'"
        ) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def export_model(
    model_dir: str | Path, fmt: str, out_dir: str | Path, image_paths: list[str]
) -> dict[str, Any]:
    """Write OUT_DIR/model.onnx or model.pt + config.json + export.json; raise if parity fails."""
    if fmt not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out_dir)
    _check_out(out)
    model, meta, pre = load_for_inference(model_dir)
    model = model.float().eval()
    x, what = parity_inputs(pre, image_paths)
    out.mkdir(parents=True, exist_ok=True)
    target = out / ("model.onnx" if fmt == "onnx" else "model.pt")
    with torch.no_grad():
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
    with writing(out / "config.json"):
        shutil.copyfile(Path(model_dir) / "config.json", out / "config.json")
    write_text_atomic(out / "export.json", json.dumps(result, indent=2))
    for path in (target, out / "config.json"):  # as a plain open() would: 0644 under umask 022
        os.chmod(path, 0o666 & ~current_umask())
    if diff > PARITY_ATOL or not result["same_top1"]:
        raise ParityError(
            f"{target}: logits differ from PyTorch by {diff:.3g} (allowed {PARITY_ATOL}) on {what}"
        )
    return result
