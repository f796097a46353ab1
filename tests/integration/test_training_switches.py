"""The accuracy switches inside real training runs; one seed makes a CPU run repeatable."""

import json

import pytest

from tests.conftest import assert_ok, make_folder, train_smoke

pytestmark = pytest.mark.integration

TIMING = {"time", "epoch_seconds", "images_per_second"}


def _numbers(run):
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k not in TIMING} for e in events]


def test_every_switch_on_trains_and_keeps_the_better_of_trained_and_ema(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b", "c"], 16)
    for path in sorted((root / "c").iterdir())[6:]:
        path.unlink()  # an under-represented class
    run = tmp_path / "run"
    proc = train_smoke(
        root,
        run,
        "train.epochs=3",
        "data.num_workers=1",
        "data.vflip=true",
        "data.auto_augment=trivial",
        "data.random_erasing=0.25",
        "data.sampler=balanced",
        "train.class_weights=balanced",
        "train.label_smoothing=0.1",
        "train.mixup_alpha=0.2",
        "train.cutmix_alpha=1.0",
        "train.ema_decay=0.9",
        "optim.layer_decay=0.7",
        "optim.clip_grad_norm=1.0",
        "train.select_metric=val_balanced_accuracy",
        "train.early_stopping_patience=2",
    )
    assert_ok(proc)
    epochs = [e for e in _numbers(run) if e["event"] == "epoch"]
    assert all("val_ema_accuracy" in e and "val_balanced_accuracy" in e for e in epochs)
    selected = json.loads((run / "model" / "config.json").read_text())["selected"]
    assert selected["metric"] == "val_balanced_accuracy"
    # Replay the selection from metrics.jsonl: per epoch the better of trained and EMA weights,
    # kept when it beats every earlier epoch (ties: lower loss).
    best = None
    for e in epochs:
        for kind, prefix in (("trained", "val_"), ("ema", "val_ema_")):
            key = (e[f"{prefix}balanced_accuracy"], -e[f"{prefix}loss"])
            if best is None or key > best[0]:
                best = (key, e["epoch"], kind, e[f"{prefix}accuracy"])
    assert (selected["epoch"], selected["weights"], selected["val_accuracy"]) == best[1:]
    assert "only 6 training images" not in proc.stdout  # 6 x 0.7 -> 4: warned with the real count
    assert "class 'c' has only" in proc.stdout


@pytest.mark.slow(reason="trains until the patience runs out")
def test_early_stopping_ends_the_phase(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 10)
    run = tmp_path / "run"
    # Frozen backbone and BatchNorm, an update too small for float32: the model never changes,
    # so epoch 2 ties epoch 1 (no improvement) and patience 1 ends the phase there.
    proc = train_smoke(
        root,
        run,
        "train.phases=[{name: head, freeze: backbone}]",
        "train.epochs=5",
        "optim.lr=1e-12",
        "optim.head_lr_mult=1",
        "train.early_stopping_patience=1",
    )
    assert_ok(proc)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert "early stopping" in proc.stdout


@pytest.mark.slow(reason="trains the same run twice and a third with another seed")
def test_one_seed_makes_a_cpu_run_repeatable(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b"], 12)
    runs = [tmp_path / "one", tmp_path / "two"]
    for run in runs:
        assert_ok(
            train_smoke(
                root,
                run,
                "train.epochs=2",
                "data.num_workers=1",
                "train.seed=5",
                "train.log_every=1",
            )
        )
    assert _numbers(runs[0]) == _numbers(runs[1])
    assert_ok(
        train_smoke(
            root,
            tmp_path / "three",
            "train.epochs=2",
            "data.num_workers=1",
            "train.seed=6",
            "train.log_every=1",
        )
    )
    assert _numbers(tmp_path / "three") != _numbers(runs[0])
