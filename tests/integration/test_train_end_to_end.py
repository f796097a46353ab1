"""One real training run on a generated folder (CPU, `datasets`, safetensors), then its outputs."""

import csv
import json
import multiprocessing
import shutil

import pytest
import yaml
from PIL import Image

from tests.conftest import REPO, assert_ok, cli_here, make_folder, run_cli, train_smoke
from trainer.config import load_config

pytestmark = pytest.mark.integration


def _events(run, event):
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == event]


def test_run_folder_is_complete(trained_run):
    _, run = trained_run
    for name in ("config.yaml", "env.json", "metrics.jsonl", "summary.json", "splits.csv"):
        assert (run / name).is_file(), name
    assert (run / "model" / "model.safetensors").is_file()
    meta = json.loads((run / "model" / "config.json").read_text())
    assert meta["class_names"] == ["cat", "dog", "fox"]
    assert meta["architecture"]["name"] == "torchvision/resnet18"
    assert meta["preprocessing"]["image_size"] == 32
    for name in ("learning_curves", "confusion_matrix", "training_samples", "mistakes"):
        with Image.open(run / "plots" / f"{name}.png") as img:
            assert img.format == "PNG" and min(img.size) >= 200, name
    report = json.loads((run / "report.json").read_text())
    assert report["split"] == "test" and report["overall"]["samples"] == 6
    assert {"balanced_accuracy", "macro_f1", "ece", "accuracy"} <= set(report["overall"])
    assert "![confusion matrix](plots/confusion_matrix.png)" in (run / "report.md").read_text()
    with open(run / "splits.csv", encoding="utf-8") as f:
        tested = [(r["path"], r["label"]) for r in csv.DictReader(f) if r["split"] == "test"]
    with open(run / "predictions.csv", encoding="utf-8") as f:
        predictions = list(csv.DictReader(f))
    assert [(r["path"], r["true"]) for r in predictions] == tested  # each test image once
    for r in predictions:
        assert r["correct"] == str(int(r["predicted"] == r["true"]))
        assert r["top3"].split("|")[0] == r["predicted"] and 0 < float(r["confidence"]) <= 1
    correct = sum(r["correct"] == "1" for r in predictions)
    assert correct / 6 == pytest.approx(report["overall"]["accuracy"])
    checkpoints = sorted((run / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 2  # one per epoch, keep_last=2
    for ckpt in checkpoints:
        assert (ckpt / "COMPLETE").is_file() and (ckpt / "model.safetensors").is_file()
        assert not ckpt.name.endswith(".tmp")


def test_summary_agrees_with_metrics_jsonl(trained_run):
    _, run = trained_run
    summary = json.loads((run / "summary.json").read_text())
    epochs = _events(run, "epoch")
    assert [e["epoch"] for e in epochs] == [1, 2] and summary["epochs"] == 2
    for e in epochs + _events(run, "train"):
        assert {"step", "epoch", "phase"} <= set(e)
    assert all("loss" in e and "lr" in e for e in _events(run, "train"))
    best = max(epochs, key=lambda e: (e["val_accuracy"], -e["val_loss"]))
    assert summary["best_val_accuracy"] == best["val_accuracy"]
    assert summary["best_epoch"] == best["epoch"]
    (test,) = _events(run, "test")
    assert summary["test_accuracy"] == test["test_accuracy"]
    with open(run / "splits.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert summary["test_samples"] == sum(r["split"] == "test" for r in rows) == 6
    assert summary["class_names"] == ["cat", "dog", "fox"]
    assert summary["train_seconds"] > 0
    assert summary["weights_in_sync"] is True


def test_summary_gives_the_time_to_the_first_step_part_by_part(trained_run):
    _, run = trained_run
    startup = json.loads((run / "summary.json").read_text())["time_to_first_step"]
    parts = {k: v for k, v in startup.items() if k != "seconds"}
    assert set(parts) == {
        "launch",
        "index",
        "check",
        "model build",
        "run folder",
        "cache build",
        "other setup",
        "phase start",
        "first batch",
    }
    assert all(v >= 0 for v in parts.values()) and parts["launch"] > 0
    assert abs(sum(parts.values()) - startup["seconds"]) < 0.01
    assert not _events(run, "startup")  # timings stay out of metrics.jsonl's repeatable numbers


def test_saved_config_reloads_to_the_same_config(trained_run):
    _, run = trained_run
    cfg = load_config(str(run / "config.yaml"))
    assert cfg.train.phases[0].epochs == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["output_dir"] == str(run)


def test_predict_from_the_model_folder_alone_reports_bad_files(trained_run, tmp_path):
    root, run = trained_run
    model = tmp_path / "handed-on-model"
    shutil.copytree(run / "model", model)  # nothing else from the run
    images = tmp_path / "new-photos"
    (images / "sub").mkdir(parents=True)
    for i, src in enumerate(sorted((root / "fox").iterdir())[:3]):
        shutil.copy(src, images / "sub" / f"{i}.png")
    Image.open(next((root / "cat").iterdir())).convert("L").save(images / "gray.jpg")
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "preds.csv"
    proc = cli_here("trainer", "predict", str(model), str(images), "--topk", "2", "--out", str(out))
    assert_ok(proc)
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    assert set(rows[0]) == {"path", "label", "probability", "label_2", "probability_2"}
    assert all(r["label"] in {"cat", "dog", "fox"} for r in rows)
    assert all(float(r["probability"]) >= float(r["probability_2"]) for r in rows)
    assert "broken.jpg" in proc.stderr and "1 unreadable" in proc.stdout


@pytest.mark.slow(reason="trainer eval in a process of its own")
def test_eval_prints_metrics_and_a_per_class_table(trained_run, tmp_path):
    root, run = trained_run
    out = tmp_path / "eval.json"
    proc = cli_here("trainer", "eval", str(run / "model"), str(root), "--json", str(out))
    assert_ok(proc)
    result = json.loads(out.read_text())
    assert result["samples"] == 60
    assert all(name in proc.stdout for name in ("cat", "dog", "fox", "accuracy"))
    partial = tmp_path / "no-fox"  # a folder without one of the model's classes
    shutil.copytree(root / "cat", partial / "cat")
    shutil.copytree(root / "dog", partial / "dog")
    proc = cli_here("trainer", "eval", str(run / "model"), str(partial))
    assert_ok(proc)
    assert [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("fox")] == [
        "-"
    ]


def test_eval_report_writes_json_markdown_and_plots(trained_run, tmp_path):
    root, run = trained_run
    proc = cli_here(
        "trainer", "eval", str(run / "model"), str(root), "--report", str(tmp_path / "rep")
    )
    assert_ok(proc)
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["overall"]["samples"] == 60
    assert [c["class"] for c in report["per_class"]] == ["cat", "dog", "fox"]
    assert (tmp_path / "rep" / "plots" / "confusion_matrix.png").is_file()
    assert (tmp_path / "rep" / "report.md").is_file()
    with open(tmp_path / "rep" / "predictions.csv", encoding="utf-8") as f:
        predictions = list(csv.DictReader(f))
    assert sorted(r["path"] for r in predictions) == sorted(
        str(p.relative_to(root)) for p in root.rglob("*.png")
    )
    assert all(r["path"].split("/")[0] == r["true"] for r in predictions)
    correct = sum(r["correct"] == "1" for r in predictions)
    assert correct == round(report["overall"]["accuracy"] * 60)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_on_real_images(trained_run, tmp_path, fmt):
    root, run = trained_run
    out = tmp_path / fmt
    proc = cli_here(
        "trainer",
        "export",
        str(run / "model"),
        "--format",
        fmt,
        "--out",
        str(out),
        "--images",
        str(root / "dog"),
    )
    assert_ok(proc)
    result = json.loads((out / "export.json").read_text())
    assert result["parity"]["inputs"] == "8 real images"
    assert result["parity"]["max_abs_diff"] < 1e-3 and result["same_top1"]
    assert json.loads((out / "config.json").read_text())["class_names"] == ["cat", "dog", "fox"]
    assert "max |logit difference|" in proc.stdout


def test_onnx_export_runs_in_onnxruntime_like_the_model_folder(trained_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import torch

    from trainer.model.folder import load_model_folder

    _, run = trained_run
    assert_ok(cli_here("trainer", "export", str(run / "model"), "--out", str(tmp_path / "x")))
    model, _ = load_model_folder(run / "model")
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's example
    session = ort.InferenceSession(
        str(tmp_path / "x" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    logits = session.run(None, {"pixel_values": x.numpy()})[0]
    assert abs(logits - model(x).detach().numpy()).max() < 1e-3


def test_a_finished_run_is_not_overwritten_by_accident(trained_run):
    root, run = trained_run
    proc = train_smoke(root, run)
    assert proc.returncode == 2
    assert "overwrite=true" in proc.stderr and "Traceback" not in proc.stderr


def test_a_run_ends_its_loader_workers_before_it_returns(image_folder, tmp_path):
    # A persistent worker left behind is ended by the garbage collector, which in a loader's
    # reference cycle cost 10 s per worker (5 s join, 5 s after a SIGTERM workers ignore):
    # `trainer bench` waited 30 s after its run, and a long-lived process would stall at random.
    run = tmp_path / "run"
    proc = train_smoke(image_folder, run, "data.num_workers=1", "train.epochs=1")
    assert_ok(proc)
    left = [child for child in multiprocessing.active_children() if child.daemon]
    assert not left, left
    proc = cli_here("trainer", "eval", str(run / "model"), str(image_folder), "--num-workers", "1")
    assert_ok(proc)
    assert not [child for child in multiprocessing.active_children() if child.daemon]


def test_root_train_py_is_trainer_train(tmp_path):
    proc = run_cli("python", str(REPO / "train.py"), f"data.root={tmp_path / 'missing'}")
    assert proc.returncode == 2 and "missing" in proc.stderr
    help_text = run_cli("python", str(REPO / "train.py"), "--help").stdout
    assert "trainer config --keys" in help_text


@pytest.mark.slow(reason="a training run of its own with W&B offline")
def test_wandb_offline_run_is_written_and_keeps_secrets_out(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 8)
    run = tmp_path / "run"
    secret = "0123456789abcdef0123456789abcdef01234567"
    proc = train_smoke(
        root,
        run,
        "train.epochs=1",
        "tracking.wandb.mode=offline",
        "checkpoint.enabled=false",
        env={"WANDB_API_KEY": secret},
    )
    assert_ok(proc)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    assert "wandb sync" in proc.stdout
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
