"""metrics.jsonl and W&B across a resume: events after the checkpoint are not kept twice, and a
resumed run continues the same W&B run."""

import json
import os
import time
from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.train.tracking import WANDB_RUN_FILE, Tracker, read_events


class FakeAccelerator:
    """What Tracker uses of accelerate's Accelerator, recording what reaches the tracker."""

    def __init__(self, main: bool = True):
        self.is_main_process = main
        self.init_calls: list[dict] = []
        self.logged: list[tuple[dict, int]] = []
        self.step = 0  # wandb's Run.step: a fresh offline run starts at 0

    def init_trackers(self, project, config=None, init_kwargs=None):
        self.init_calls.append({"project": project, "config": config, "init": init_kwargs})

    def get_tracker(self, name, unwrap=False):
        return self

    def log(self, values, step=None):
        self.logged.append((values, step))


def _cfg(run_dir: Path, *overrides: str):
    return load_config("cpu-smoke", [f"output_dir={run_dir}", *overrides])


def _log_steps(tracker: Tracker, steps) -> None:
    for step in steps:
        tracker.log("train", step=step, epoch=1, phase="train", loss=1.0 / step)
    tracker.log("epoch", step=steps[-1], epoch=1, phase="train", val_accuracy=0.5)


def _steps(run_dir: Path) -> list[tuple[str, int]]:
    return [(e["event"], e["step"]) for e in read_events(run_dir / "metrics.jsonl")]


def test_resume_keeps_only_events_up_to_the_checkpoint_step(tmp_path):
    cfg = _cfg(tmp_path)
    first = Tracker(FakeAccelerator(), tmp_path, cfg)
    _log_steps(first, [1, 2, 3, 4, 5, 6])
    first.finish()
    # A process killed mid-write leaves half a line at the end.
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"event": "train", "st')

    resumed = Tracker(FakeAccelerator(), tmp_path, cfg, resume_step=4)
    assert [(e["event"], e["step"]) for e in resumed.events] == [("train", s) for s in range(1, 5)]
    assert _steps(tmp_path) == [("train", s) for s in range(1, 5)]
    _log_steps(resumed, [5, 6, 7])
    resumed.finish()
    expected = [("train", s) for s in range(1, 8)] + [("epoch", 7)]
    assert _steps(tmp_path) == expected  # each step once, in order
    assert [(e["event"], e["step"]) for e in resumed.events] == expected
    assert not list(tmp_path.glob("*.tmp"))


def test_a_fresh_tracker_starts_with_no_events(tmp_path):
    tracker = Tracker(FakeAccelerator(), tmp_path, _cfg(tmp_path))
    assert tracker.events == []
    tracker.finish()
    assert not (tmp_path / WANDB_RUN_FILE).exists()  # W&B is off


def test_resume_without_a_metrics_file_starts_one(tmp_path):
    tracker = Tracker(FakeAccelerator(), tmp_path, _cfg(tmp_path), resume_step=10)
    assert tracker.events == []
    _log_steps(tracker, [11])
    tracker.finish()
    assert _steps(tmp_path) == [("train", 11), ("epoch", 11)]


def test_other_processes_write_nothing(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"event": "train", "step": 9}\n')
    tracker = Tracker(FakeAccelerator(main=False), tmp_path, _cfg(tmp_path), resume_step=1)
    tracker.log("train", step=2, epoch=1, phase="train", loss=1.0)
    tracker.finish()
    assert tracker.events == [] and _steps(tmp_path) == [("train", 9)]


def test_wandb_resume_reuses_the_run_id_and_skips_steps_it_has(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = _cfg(tmp_path, "tracking.wandb.mode=offline")
    first_acc = FakeAccelerator()
    first = Tracker(first_acc, tmp_path, cfg)
    _log_steps(first, [1, 2, 3, 4, 5, 6])
    first.finish()
    init = first_acc.init_calls[0]["init"]["wandb"]
    run_id = json.loads((tmp_path / WANDB_RUN_FILE).read_text())["id"]
    assert init["id"] == run_id and "resume" not in init

    acc = FakeAccelerator()
    resumed = Tracker(acc, tmp_path, cfg, resume_step=4)
    init = acc.init_calls[0]["init"]["wandb"]
    assert init["id"] == run_id and init["resume"] == "allow"
    _log_steps(resumed, [5, 6, 7, 8])
    # Steps 5 and 6 reached W&B before the restart; W&B refuses steps below its last one.
    assert [step for _, step in acc.logged] == [7, 8, 8]
    assert _steps(tmp_path)[-5:] == [("train", 5), ("train", 6), ("train", 7), ("train", 8)] + [
        ("epoch", 8)
    ]

    fresh_acc = FakeAccelerator()  # a fresh run (resume_step None) gets a new W&B run
    Tracker(fresh_acc, tmp_path, cfg).finish()
    assert fresh_acc.init_calls[0]["init"]["wandb"]["id"] != run_id


def test_wandb_api_key_goes_to_the_environment_not_the_config(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    key = "fake-cli-key-0123456789"
    cfg = _cfg(tmp_path, "tracking.wandb.mode=offline", f"tracking.wandb.api_key={key}")
    acc = FakeAccelerator()
    Tracker(acc, tmp_path, cfg).finish()
    assert os.environ["WANDB_API_KEY"] == key
    config = acc.init_calls[0]["config"]
    assert config["tracking.wandb.api_key"] is None
    assert key not in json.dumps(acc.init_calls)


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """Real wandb, offline, with its own folders under tmp_path (nothing in $HOME)."""
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # the next test's Accelerator starts clean


def test_real_wandb_offline_resume_continues_one_run(tmp_path, wandb_offline):
    from trainer import runtime

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = _cfg(run_dir, "tracking.wandb.mode=offline")
    commands = []
    for resume_step in (None, 3):
        accelerator = runtime.make_accelerator(log_with=["wandb"])
        tracker = Tracker(accelerator, run_dir, cfg, resume_step=resume_step)
        _log_steps(tracker, [1, 2, 3, 4, 5] if resume_step is None else [4, 5, 6])
        commands.append(tracker.finish())
        accelerator.end_training()
        time.sleep(1.1)  # offline folders are named by the second they start

    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    run_id = json.loads((run_dir / WANDB_RUN_FILE).read_text())["id"]
    assert len(folders) == 2
    assert {f.name.rsplit("-", 1)[-1] for f in folders} == {run_id}
    assert all(list(f.glob(f"run-{run_id}.wandb")) for f in folders)
    # Offline: the command uploads both parts, in order, into the one run.
    assert commands[0] == f"wandb sync {folders[0]}"
    assert commands[1] == f"wandb sync {folders[0]} {folders[1]}"
    assert _steps(run_dir) == [("train", s) for s in range(1, 7)] + [("epoch", 6)]
