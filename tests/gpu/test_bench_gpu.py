"""`trainer bench` on CUDA with a small setting: every case runs and reports its peak GPU memory.
Skipped on machines without CUDA. Checks what is reported, never how fast it is."""

import json

import pytest
import torch

from tests.conftest import assert_ok, run_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_bench_on_cuda_reports_peak_memory_per_case(tmp_path):
    data, out = tmp_path / "jpegs", tmp_path / "bench.json"
    made = run_cli(
        "trainer",
        "bench",
        "--make-data",
        str(data),
        "--images",
        "256",
        "--size",
        "160x120",
        "--classes",
        "4",
    )
    assert_ok(made)
    proc = run_cli(
        "trainer",
        "bench",
        "--data",
        str(data),
        "--steps",
        "10",
        "--warmup",
        "3",
        "--epochs",
        "2",
        "model.name=torchvision/resnet18",
        "data.image_size=96",
        "train.batch_size=32",
        "--json",
        str(out),
    )
    assert_ok(proc)
    result = json.loads(out.read_text())
    assert result["device_type"] == "cuda"
    assert result["device"] == torch.cuda.get_device_name()
    assert result["settings"]["channels_last"] is True  # on by default on CUDA, as in the runner
    for key in "abcd":
        case = result["cases"][key]
        assert case["images_per_second"] > 0, key
        assert case["peak_memory_bytes"] > 0, key
    table = proc.stdout[proc.stdout.rindex("\ncase ") :]
    assert "GiB" in table and "n/a" not in table
    # The blog setting trains in fp32 with batch 16, the others with the configured precision/batch.
    assert result["cases"]["d"]["settings"]["precision"] == "no"
