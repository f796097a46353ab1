"""Real `accelerate launch` with the CPU profile: 2 processes over gloo."""

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path
from subprocess import PIPE, STDOUT

import pytest
import yaml

from tests.conftest import (
    BIN,
    REPO,
    TINY_MODEL,
    accelerate_launch,
    assert_ok,
    cli_here,
    free_port,
    make_folder,
    run_cli,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="2 gloo processes or 2 simulated nodes train and evaluate"),
]


def test_odd_sized_eval_counts_every_image_once_on_two_processes(trained_run, tmp_path):
    _, run = trained_run
    data = tmp_path / "eval37"
    for cls, n in (("cat", 13), ("dog", 12), ("fox", 12)):
        make_folder(data, [cls], n, seed=5)
    single, double = tmp_path / "one.json", tmp_path / "two.json"
    # batch 4 x 2 processes: 37 is no multiple of 8, so DDP pads the last batch with repeats.
    args = ("eval", str(run / "model"), str(data), "--batch-size", "4", "--json")
    assert_ok(cli_here("trainer", *args, str(single)))
    assert_ok(accelerate_launch("-m", "trainer", *args, str(double)))
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert one["samples"] == two["samples"] == 37
    assert sum(two["support"]) == 37
    assert two["accuracy"] == pytest.approx(one["accuracy"], abs=1e-9)
    assert two["confusion_matrix"] == one["confusion_matrix"]


def test_predict_on_two_processes_writes_each_image_once(trained_run, tmp_path):
    root, run = trained_run
    images = tmp_path / "photos"
    shutil.copytree(root / "dog", images)
    (images / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    proc = accelerate_launch(
        "-m",
        "trainer",
        "predict",
        str(run / "model"),
        str(images),
        "--batch-size",
        "3",
        "--out",
        str(out),
    )
    assert_ok(proc)
    with open(out, encoding="utf-8") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert len(paths) == len(set(paths)) == 20  # 20 readable images, 21 files, 2 x 3 per step
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped unreadable")]
    assert len(skipped) == 1 and "broken.png" in skipped[0]


def test_two_phase_ddp_training_keeps_weights_identical_across_ranks(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b", "c"], 14)
    recipe = tmp_path / "two-phase.yaml"
    recipe.write_text(
        """
model: {name: timm/test_resnet, pretrained: false, head: mlp, head_hidden: 32}
data: {image_size: 32, num_workers: 0}
optim: {optimizer: adam, lr: 1.0e-3, head_lr_mult: 1, scheduler: constant}
train:
  batch_size: 6
  phases:
    - {name: head, epochs: 1, freeze: backbone}
    - {name: finetune, epochs: 1, freeze: none, optim: {lr: 1.0e-4}}
"""
    )
    run = tmp_path / "run"
    proc = accelerate_launch(
        str(REPO / "train.py"), "--config", str(recipe), f"data.root={root}", f"output_dir={run}"
    )
    assert_ok(proc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["phases"] == ["head", "finetune"] and summary["epochs"] == 2
    # Phase 2 unfreezes the backbone; if DDP were not re-prepared its gradients would not be
    # all-reduced and the ranks' backbones would drift apart.
    assert summary["weights_in_sync"] is True
    with open(run / "splits.csv", encoding="utf-8") as f:
        n_test = sum(row["split"] == "test" for row in csv.DictReader(f))
    assert summary["test_samples"] == n_test  # the training loop's gathers count each image once
    phases = [
        json.loads(line)["phase"] for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    assert "head" in phases and "finetune" in phases
    assert "2 process(es)" in proc.stdout


def test_accelerates_own_self_test_passes_with_our_cpu_profile(tmp_path):
    # The shipped profile, on a free port: `accelerate test` takes no --main_process_port and
    # the default 29500 may be held by another job on the machine.
    profile = yaml.safe_load((REPO / "accelerate_configs" / "cpu.yaml").read_text())
    profile["main_process_port"] = free_port()
    config = tmp_path / "cpu.yaml"
    config.write_text(yaml.safe_dump(profile))
    # Without ACCELERATE_USE_CPU, accelerate's plain Accelerator() on a machine without CUDA makes
    # two unrelated "main" processes, which race on the file its script writes in the working
    # directory (one fails unlinking it: FileNotFoundError, seen once in CI). With it, the two
    # form one gloo group, as our own runs do.
    proc = run_cli(
        "accelerate",
        "test",
        "--config_file",
        str(config),
        timeout=300,
        cwd=tmp_path,
        env={"ACCELERATE_USE_CPU": "true"},
    )
    assert_ok(proc)
    assert "DistributedType.MULTI_CPU" in proc.stdout + proc.stderr
    assert "Test is a success" in proc.stdout + proc.stderr


def _two_nodes(root, run, caches: tuple, timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """Two simulated nodes on this machine: two `accelerate launch` commands, machine ranks 0
    and 1, 2 gloo processes each, node i with TRAINER_CACHE_DIR=caches[i]."""
    port = str(free_port())
    procs = []
    for rank, cache in enumerate(caches):
        cmd = [str(BIN / "accelerate"), "launch", "--config_file"]
        cmd += [str(REPO / "accelerate_configs" / "cpu.yaml"), "--num_machines", "2"]
        cmd += ["--num_processes", "4", "--machine_rank", str(rank)]
        cmd += ["--main_process_ip", "127.0.0.1", "--main_process_port", port]
        cmd += [str(REPO / "train.py"), "--config", "cpu-smoke", f"model.name={TINY_MODEL}"]
        cmd += [f"data.root={root}"]
        cmd += [f"output_dir={run}", "train.epochs=1"]
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "TRAINER_CACHE_DIR": str(cache)}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        procs.append(
            subprocess.Popen(cmd, cwd=REPO, env=env, stdout=PIPE, stderr=STDOUT, text=True)
        )
    outs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        outs.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    return outs


def _finished_caches(cache: Path) -> list[Path]:
    """The pixel caches in a TRAINER_CACHE_DIR; nothing else may be left there (no build
    folder, no lock file)."""
    entries = list((cache / "pixels").iterdir())
    assert all((e / "meta.json").is_file() for e in entries), entries
    return entries


def test_two_nodes_build_one_pixel_cache_each_or_one_in_all_when_shared(tmp_path):
    root = make_folder(tmp_path / "images", ["a", "b", "c"], 10)
    n = 30
    own = (tmp_path / "cache-node0", tmp_path / "cache-node1")
    outs = _two_nodes(root, tmp_path / "run-own", own)
    for out in outs:
        assert_ok(out)
    summary = json.loads((tmp_path / "run-own" / "summary.json").read_text())
    assert summary["world_size"] == 4 and summary["weights_in_sync"] is True
    # each node: one process decoded every image once, its other process waited or reused
    assert [out.stdout.count(f"pixel cache: {n} images decoded in") for out in outs] == [1, 1]
    assert summary["images_decoded"] == 2 * n
    assert [len(_finished_caches(c)) for c in own] == [1, 1]

    shared = tmp_path / "cache-shared"
    outs = _two_nodes(root, tmp_path / "run-shared", (shared, shared))
    for out in outs:
        assert_ok(out)
    summary = json.loads((tmp_path / "run-shared" / "summary.json").read_text())
    assert summary["weights_in_sync"] is True
    assert sum(out.stdout.count(f"pixel cache: {n} images decoded in") for out in outs) == 1
    assert summary["images_decoded"] == n
    assert len(_finished_caches(shared)) == 1
