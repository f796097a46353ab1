import subprocess
import sys

import torch

from trainer.model import weights


def test_list_finds_torchvision_files_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert weights.list_cached() == []
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save({"w": torch.zeros(3)}, tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth")
    ((name, path, size),) = weights.list_cached()
    assert name == "torchvision/resnet50" and path.endswith("resnet50-11ad3fa6.pth") and size > 0


def test_download_offline_fails_fast_with_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "weights",
            "download",
            "torchvision/resnet18",
            "--to",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TRAINER_OFFLINE": "1", "HOME": str(tmp_path)},
        timeout=120,
    )
    assert (
        proc.returncode == 2 and "TRAINER_OFFLINE" in proc.stderr and "Traceback" not in proc.stderr
    )
    assert not list(tmp_path.glob("*.pth"))
