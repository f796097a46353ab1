"""`trainer bench` on CUDA with a small setting: every case runs and reports its peak GPU memory.
Skipped without CUDA (`launch/gpu_check.sh --cpu` runs the bench itself on the CPU, where there
is no GPU memory to report). Checks what is reported, never how fast it is."""

import json

import torch

from tests.conftest import assert_ok
from tests.gpu.checkdevice import needs_cuda, on_check_device, run_trainer

pytestmark = [*on_check_device, needs_cuda("peak GPU memory exists on CUDA only")]


def test_bench_on_cuda_reports_peak_memory_per_case(tmp_path):
    data, out = tmp_path / "jpegs", tmp_path / "bench.json"
    made = run_trainer(
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
    proc = run_trainer(
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
