"""Weights files from elsewhere: a pickle that would run code and a cut-off safetensors file are
refused with one line naming the file, and nothing in them runs."""

import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from tests.conftest import cli_here, make_folder
from trainer.config import ModelConfig
from trainer.model.classifier import build_model
from trainer.model.folder import load_model_folder, save_model_folder
from trainer.model.safeload import (
    ModelError,
    WeightsFileError,
    load_safetensors,
    load_torch_weights,
)

RESNET18 = "torchvision/resnet18"


class _RunsCode:
    """Unpickling this calls os.system, which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payload(path: Path, marker: Path, fmt: str) -> Path:
    state = {"conv1.weight": torch.zeros(1), "evil": _RunsCode(marker)}
    if fmt == "torch.save":  # the zip format of torch >= 1.6
        torch.save(state, path)
    else:  # a bare pickle, as old .pth files are
        with open(path, "wb") as f:
            pickle.dump(state, f)
    return path


def _cut_in_half(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_safetensors(path: Path) -> Path:
    save_file(torchvision.models.resnet18(weights=None).state_dict(), path)
    return _cut_in_half(path)


def _model_folder(folder: Path) -> Path:
    cfg = ModelConfig(name=RESNET18, pretrained=False)
    model, pre = build_model(cfg, 2)
    save_model_folder(model, folder, cfg, ["a", "b"], pre.with_size(32))
    return folder


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_the_payload_really_runs_code_when_unpickled(tmp_path, fmt):
    """So that the refusals below mean something."""
    marker = tmp_path / "marker"
    path = _payload(tmp_path / "evil.pth", marker, fmt)
    with open(path, "rb") as f:
        torch.load(f, weights_only=False) if fmt == "torch.save" else pickle.load(f)
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_helper_refuses_a_pickle_that_would_run_code(tmp_path, fmt):
    marker = tmp_path / "marker"
    path = _payload(tmp_path / "evil.pth", marker, fmt)
    with pytest.raises(WeightsFileError) as err:
        load_torch_weights(path)
    message = str(err.value)
    assert str(path) in message and "not a plain weights file" in message
    assert "weights_only=True" in message and "\n" not in message
    assert "weights_only=False" not in message  # torch's advice to bypass the check is dropped
    assert not marker.exists()
    assert isinstance(err.value, ModelError)  # the CLI's exit 2


@pytest.mark.parametrize("fmt", ["torch.save", "pickle"])
def test_pretrained_pickle_that_would_run_code_is_refused(tmp_path, fmt):
    marker = tmp_path / "marker"
    path = _payload(tmp_path / "evil.pth", marker, fmt)
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(name=RESNET18, pretrained=str(path)), 2)
    message = str(err.value)
    assert message.startswith("model.pretrained: refused to load") and str(path) in message
    assert "not a plain weights file" in message and "\n" not in message
    assert not marker.exists()


def test_helper_loads_plain_weights_files(tmp_path):
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "w.pth")
    save_file(state, tmp_path / "w.safetensors")
    assert torch.equal(load_torch_weights(tmp_path / "w.pth")["w"], state["w"])
    assert torch.equal(load_safetensors(tmp_path / "w.safetensors")["w"], state["w"])


def test_helper_refuses_a_truncated_safetensors_file_naming_it(tmp_path):
    path = _truncated_safetensors(tmp_path / "w.safetensors")
    with pytest.raises(WeightsFileError) as err:
        load_safetensors(path)
    message = str(err.value)
    assert f"damaged or truncated safetensors file {path}" in message and "\n" not in message


def test_helper_refuses_a_truncated_pth_file_naming_it(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsFileError, match=f"damaged or truncated weights file {path}"):
        load_torch_weights(_cut_in_half(path))


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_safetensors(tmp_path / "nope.safetensors")


def test_pretrained_truncated_safetensors_is_refused(tmp_path):
    path = _truncated_safetensors(tmp_path / "r18.safetensors")
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(name=RESNET18, pretrained=str(path)), 2)
    message = str(err.value)
    assert f"damaged or truncated safetensors file {path}" in message and "\n" not in message


def test_model_folder_with_truncated_weights_is_refused(tmp_path):
    folder = _model_folder(tmp_path / "model")
    _cut_in_half(folder / "model.safetensors")
    with pytest.raises(WeightsFileError, match="damaged or truncated safetensors file"):
        load_model_folder(folder)


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_cli_on_a_model_folder_with_truncated_weights_exits_2(tmp_path, command):
    folder = _model_folder(tmp_path / "model")
    weights = _cut_in_half(folder / "model.safetensors")
    images = make_folder(tmp_path / "images", ["a", "b"], 2)
    proc = cli_here("trainer", command, str(folder), str(images))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr[-3000:]
    prefix = f"trainer {command}: error: damaged or truncated safetensors file {weights} ("
    assert errors[0].startswith(prefix), errors[0]
    assert "Traceback" not in proc.stderr
