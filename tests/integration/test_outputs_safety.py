"""predict --out, eval --json/--report, scan --json and export --out never replace a file the user
made; damaged or mistaken model inputs are one line and exit 2.

In-process `cli.main` calls on a tiny untrained model folder (seconds, no training run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import make_folder, make_pre_split
from trainer.cli import main

pytestmark = pytest.mark.integration

PREDICT_REFUSAL = (
    "exists and is not a predictions file written by trainer predict; nothing was changed"
)


@pytest.fixture
def images(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TRAINER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return make_folder(tmp_path / "images", ["a", "b"], 2, size=32)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith(f"trainer {command}:")]
    assert len(lines) == 1 and lines[0].startswith(f"trainer {command}: error: "), err
    return lines[0]


def _predict(model_dir: Path, *args: str) -> int:
    return main(["predict", str(model_dir), *args, "--num-workers", "0"])


# ----------------------------------------------------------------------------- predict --out


def test_predict_out_onto_an_input_image_is_refused_and_the_image_kept(model_dir, images, capsys):
    a, b = images / "a" / "img_000.png", images / "b" / "img_000.png"
    before = _snapshot(images)
    assert _predict(model_dir, str(a), str(b), "--out", str(a)) == 2
    line = _error_line(capsys.readouterr().err, "predict")
    assert f"--out {a}: {PREDICT_REFUSAL}" in line and "choose a new path or remove it" in line
    assert _snapshot(images) == before


def test_predict_out_onto_any_other_file_is_refused_before_the_model_runs(images, capsys):
    notes = images.parent / "notes.csv"
    notes.write_text("name,phone\nann,123\n", encoding="utf-8")
    # no model folder at all: the refusal comes first, so nothing was loaded or run
    assert _predict(images.parent / "no-model", str(images), "--out", str(notes)) == 2
    assert PREDICT_REFUSAL in _error_line(capsys.readouterr().err, "predict")
    assert notes.read_text(encoding="utf-8") == "name,phone\nann,123\n"


def test_predict_out_onto_a_folder_is_refused(model_dir, images, capsys):
    assert _predict(model_dir, str(images), "--out", str(images)) == 2
    line = _error_line(capsys.readouterr().err, "predict")
    assert f"--out {images}: is a folder; give a file path" in line


@pytest.mark.parametrize("name", ["p.csv", "p.json"])
def test_predict_replaces_its_own_earlier_predictions(model_dir, images, capsys, name):
    out = images.parent / name
    assert _predict(model_dir, str(images / "a"), "--out", str(out)) == 0
    first = out.read_bytes()
    assert _predict(model_dir, str(images), "--out", str(out), "--topk", "2") == 0
    assert out.read_bytes() != first and str(images / "b" / "img_000.png") in out.read_text()
    # an earlier top-2 file is recognised as ours too
    assert _predict(model_dir, str(images / "a"), "--out", str(out)) == 0
    assert out.read_bytes() == first


# ----------------------------------------------------------------------------- eval


def test_eval_json_onto_a_users_file_is_refused_and_its_own_is_replaced(model_dir, images, capsys):
    mine = images.parent / "mine.json"
    mine.write_text('{"accuracy": "my own notes"}', encoding="utf-8")
    argv = ["eval", str(model_dir), str(images), "--num-workers", "0", "--json"]
    assert main([*argv, str(mine)]) == 2
    line = _error_line(capsys.readouterr().err, "eval")
    assert f"--json {mine}: exists and is not a metrics file written by trainer eval" in line
    assert mine.read_text(encoding="utf-8") == '{"accuracy": "my own notes"}'
    ours = images.parent / "m.json"
    assert main([*argv, str(ours)]) == 0 and main([*argv, str(ours)]) == 0
    assert json.loads(ours.read_text(encoding="utf-8"))["class_names"] == ["a", "b"]


def test_eval_report_into_a_training_run_folder_is_refused_and_changes_nothing(
    model_dir, images, capsys
):
    run = images.parent / "run"
    shutil.copytree(model_dir, run / "model")
    for name, text in [("trainer-run.json", "{}"), ("config.yaml", "seed: 0\n")]:
        (run / name).write_text(text, encoding="utf-8")
    (run / "report.json").write_text('{"overall": {}, "per_class": []}', encoding="utf-8")
    (run / "plots").mkdir()
    (run / "plots" / "confusion_matrix.png").write_bytes(b"the run's own plot")
    before = _snapshot(run)
    argv = ["eval", str(run / "model"), str(images), "--num-workers", "0", "--report", str(run)]
    assert main(argv) == 2
    line = _error_line(capsys.readouterr().err, "eval")
    assert f"--report {run}: holds other files" in line and "training run folder" in line
    assert "choose a new or empty folder" in line
    assert _snapshot(run) == before


def test_eval_report_writes_a_new_folder_and_replaces_its_own_report(model_dir, images, capsys):
    report = images.parent / "report"
    argv = ["eval", str(model_dir), str(images), "--num-workers", "0", "--report", str(report)]
    assert main(argv) == 0 and main(argv) == 0
    assert {p.name for p in report.iterdir()} == {
        "report.json",
        "report.md",
        "predictions.csv",
        "plots",
    }
    (report / "my-notes.txt").write_text("mine", encoding="utf-8")  # now the user's folder too
    assert main(argv) == 2
    assert "--report" in _error_line(capsys.readouterr().err, "eval")
    assert (report / "my-notes.txt").read_text(encoding="utf-8") == "mine"


def test_eval_of_a_folder_that_is_not_pre_split_notes_it_scores_every_image(
    model_dir, images, capsys
):
    run = images.parent / "run"
    shutil.copytree(model_dir, run / "model")
    (run / "trainer-run.json").write_text("{}", encoding="utf-8")
    (run / "report.json").write_text("{}", encoding="utf-8")
    assert main(["eval", str(run / "model"), str(images), "--num-workers", "0"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "note:" in line]
    assert len(notes) == 1 and f"{images} is not pre-split: every image is scored" in notes[0]
    assert str(run / "report.json") in notes[0]
    split = make_pre_split(images.parent / "split", ["a", "b"], {"train": 1, "test": 1})
    assert main(["eval", str(run / "model"), str(split), "--num-workers", "0"]) == 0
    assert "note:" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- scan, export


def test_scan_json_onto_a_users_file_is_refused(images, capsys):
    mine = images / "a" / "img_001.png"
    before = mine.read_bytes()
    assert main(["scan", str(images), "--json", str(mine), "--workers", "1"]) == 2
    line = _error_line(capsys.readouterr().err, "scan")
    assert f"--json {mine}: exists and is not a report written by trainer scan" in line
    assert mine.read_bytes() == before


def test_export_out_onto_a_file_is_refused(model_dir, images, capsys):
    mine = images / "a" / "img_001.png"
    before = mine.read_bytes()
    assert main(["export", str(model_dir), "--format", "torchscript", "--out", str(mine)]) == 2
    assert f"--out {mine}: is a file, not a folder" in _error_line(
        capsys.readouterr().err, "export"
    )
    assert mine.read_bytes() == before


# ----------------------------------------------------------------------------- model inputs


def test_a_run_folder_given_for_the_model_folder_suggests_run_model(model_dir, images, capsys):
    run = images.parent / "run"
    shutil.copytree(model_dir, run / "model")
    assert _predict(run, str(images), "--out", "-") == 2
    line = _error_line(capsys.readouterr().err, "predict")
    assert f"'{run}' is not a model folder" in line and f"did you mean {run / 'model'}?" in line


def test_a_model_with_non_finite_weights_is_refused_naming_the_file(model_dir, images, capsys):
    damaged = images.parent / "damaged"
    shutil.copytree(model_dir, damaged)
    weights = damaged / "model.safetensors"
    state = load_file(weights)
    state["head.0.weight"][0, 0] = float("nan")  # damaged bytes under an intact header
    save_file(state, weights)
    assert _predict(damaged, str(images), "--out", "-") == 2
    line = _error_line(capsys.readouterr().err, "predict")
    assert f"{weights}: holds non-finite weights" in line and "copy it again or retrain" in line


def test_an_empty_image_is_skipped_with_scans_reason(model_dir, images, capsys):
    empty = images / "a" / "empty.png"
    empty.write_bytes(b"")
    assert _predict(model_dir, str(images), "--out", "-") == 0
    err = capsys.readouterr().err
    assert f"skipped unreadable image {empty}: empty file (0 bytes)" in err


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("maybe", "(model.pretrained takes true, false or a weights file path)"),
        ("some.png", "some.png: not a weights file (.safetensors or .pth)"),
    ],
)
def test_a_pretrained_value_that_is_no_weights_file_says_what_it_takes(
    images, monkeypatch, value, words
):
    from trainer.config import ModelConfig
    from trainer.model.classifier import build_model
    from trainer.model.safeload import ModelError

    shutil.copyfile(images / "a" / "img_000.png", images.parent / "some.png")
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(name="torchvision/resnet18", pretrained=value), 2)
    assert words in str(err.value) and "Unsupported operand" not in str(err.value)


def test_torch_weights_files_still_load(tmp_path):
    from trainer.model.safeload import load_torch_weights

    state = {"w": torch.arange(4.0)}
    torch.save(state, tmp_path / "new.pth")
    torch.save(state, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    for name in ("new.pth", "old.pth"):
        assert torch.equal(load_torch_weights(tmp_path / name)["w"], state["w"])
