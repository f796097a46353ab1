"""Ctrl-C: in training a stop with a checkpoint (a second one quits, unless the save has begun);
an interrupted cache build leaves no temp folder or file, and dead builds' leftovers are removed."""

import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from tests.conftest import make_folder
from trainer.config import DataConfig
from trainer.data import badfiles as scan_module
from trainer.data.pipelines import housekeeping, pixelcache
from trainer.data.transforms import Preprocessing
from trainer.data.walk import list_images
from trainer.data.workers import RUN_SIGNALS
from trainer.train.preemption import StopFlag

ONE_PROCESS = SimpleNamespace(num_processes=1)


@pytest.fixture
def flag():
    before = {sig: signal.getsignal(sig) for sig in RUN_SIGNALS}
    stop = StopFlag()
    stop.install()
    yield stop
    stop.uninstall()
    # A stopped run leaves its signals ignored on the way out; pytest's process goes on.
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_ctrl_c_in_training_sets_the_stop_flag_and_says_so(flag, capfd):
    signal.raise_signal(signal.SIGINT)  # the handler runs before this returns: no exception
    assert flag.signal_name == "SIGINT" and not flag.requeue_wanted
    assert "Ctrl-C: saving a checkpoint at the next step" in capfd.readouterr().err
    assert flag.agreed(ONE_PROCESS)


def test_a_second_ctrl_c_before_the_save_quits_at_once(flag):
    signal.raise_signal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    flag.uninstall()
    signal.raise_signal(signal.SIGINT)  # a third one on the way out is ignored, also now


def test_a_second_ctrl_c_once_the_save_began_only_asks_to_wait(flag, capfd):
    signal.raise_signal(signal.SIGINT)
    assert flag.agreed(ONE_PROCESS)  # the stop is decided: the save and exit follow
    signal.raise_signal(signal.SIGINT)
    signal.raise_signal(signal.SIGINT)
    assert capfd.readouterr().err.count("saving the checkpoint, please wait") == 2
    assert flag.signal_name == "SIGINT"


def test_ctrl_c_during_a_periodic_save_waits_for_it(flag, capfd):
    signal.raise_signal(signal.SIGTERM)  # first signal: a stop is pending
    with flag.saving_checkpoint():
        signal.raise_signal(signal.SIGINT)
    assert "please wait" in capfd.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)  # the save is over: out now


def test_signals_are_restored_after_training(flag):
    flag.uninstall()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stop_signal_repeated_on_the_way_out_is_ignored(flag):
    signal.raise_signal(signal.SIGUSR1)  # the stop: save, requeue, exit 75
    flag.uninstall()
    for sig in RUN_SIGNALS:
        assert signal.getsignal(sig) is signal.SIG_IGN
    signal.raise_signal(signal.SIGUSR1)  # as Slurm may repeat it: this process lives on


def test_loader_workers_ignore_ctrl_c():
    code = (
        "import os, signal; from trainer.data.workers import ignore_in_workers; ignore_in_workers(); "
        "[os.kill(os.getpid(), s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)]; "
        "print('alive')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "alive", out.stderr


# --------------------------------------------------------------------------- pixel cache build


def _build(tmp_path, workers=1):
    """A build of 6 images; with 1 worker they are decoded in 3 jobs of 2."""
    paths = list_images(make_folder(tmp_path / "img", ["a", "b"], 3))
    pre = Preprocessing(24, 28, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
    return lambda: pixelcache.build(paths, pre, cfg, workers, say=lambda _: None)


def test_an_interrupted_pixel_cache_build_leaves_no_temp_folder(tmp_path, monkeypatch):
    build = _build(tmp_path)
    calls = []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(job)

    original = pixelcache._fill
    monkeypatch.setattr(pixelcache, "_fill", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build()
    assert os.listdir(tmp_path / "cache") == []
    monkeypatch.undo()
    cache = build()  # and the next run builds it whole
    assert (cache.folder / "meta.json").is_file() and os.listdir(tmp_path / "cache") == [
        cache.folder.name
    ]


def test_stale_builds_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    host, now = socket.gethostname(), time.time()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        "dead-here": f"{'1' * 32}.tmp-{host}-{dead.pid}",
        "live-here": f"{'2' * 32}.tmp-{host}-{os.getpid()}",
        "other-host-recent": f"{'3' * 32}.tmp-node-17-4242",
        "other-host-old": f"{'4' * 32}.tmp-node-17-4243",
        "old-format-recent": f"{'5' * 32}.tmp-4244",
        "a-finished-cache": "6" * 32,
        "users-old": "thesis.tmp-2023",  # not named like a build: never touched
        "users-dead-here": f"photos.tmp-{host}-{dead.pid}",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "pixels.u8").write_bytes(b"\0")
    old = now - housekeeping.STALE_AFTER_S - 60
    for name in (names["other-host-old"], names["users-old"]):
        for p in [tmp_path / name, *(tmp_path / name).iterdir()]:
            os.utime(p, (old, old))
    removed = housekeeping.remove_stale_builds(tmp_path, now=now)
    assert sorted(p.name for p, _ in removed) == sorted(
        [names["dead-here"], names["other-host-old"]]
    )
    assert sorted(os.listdir(tmp_path)) == sorted(
        names[k]
        for k in (
            "live-here",
            "other-host-recent",
            "old-format-recent",
            "a-finished-cache",
            "users-old",
            "users-dead-here",
        )
    )


# --------------------------------------------------------------------------- scan verdict cache


def test_an_interrupted_scan_cache_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_module.json, "dump", interrupted)
    target = tmp_path / "scan" / "cache.json"
    with pytest.raises(KeyboardInterrupt):
        scan_module._write_cache(target, {"x": [1, 2, None, None]})
    assert os.listdir(tmp_path / "scan") == []


@pytest.mark.slow(reason="waits out the workers' grace period")
def test_a_process_with_live_workers_that_ignore_signals_exits():
    # Workers ignore SIGTERM, so multiprocessing's exit (SIGTERM, then join) would wait forever;
    # the loop's exit hook kills them first. Two of them: the first kill must not stop the rest.
    code = (
        "import torch; from trainer.data import loaders; "
        "ds = torch.utils.data.TensorDataset(torch.arange(8.0)); "
        "kept = loaders.make_loader(ds, 2, workers=2); it = iter(kept); next(it); print('done')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "done", out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
