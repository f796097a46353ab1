"""How big each step of launch/gpu_check.sh is: the issue's setting on one GPU, tiny under --cpu
(3.5-4.5 minutes on 2 CPU cores, `make test` runs it), and how long the GPU run should take.

Duration on one H100/H200 (an estimate, not a measurement: no GPU has run the check yet), from
these sizes and typical speeds: ResNet-50 bf16 training ~2,500-3,000 images/s eager on one
H100-class GPU at batch 256; a PIL decode + crop + ToTensor of a 224x224 JPEG ~1.2 ms on one
core; the blog loop's fp32 batch-16 steps ~20 ms (~400 images/s with its serial PIL work, ~600
in frozen and eval epochs); torch.compile of ResNet-50 ~60 s cold, less once inductor's FX graph
cache holds it; a trainer process ~10 s to import and start on CUDA.
  data          7,000 JPEGs of 224x224 on 16 CPUs                                    ~10 s
  tests         ~12 short runs, 4 at a time (pytest-xdist, on the GPU image)         ~70 s
  bench_eager   (a) 40 steps, (c) 70 batches, (d) 40 steps, (b) 2 epochs of 5,000     ~45 s
  frozen x2     the same cases on the frozen phase, (b) its 10 epochs at batch 32   ~65 s
  whole_resnet50-two-phase   blog: 7 epochs x 5,000 + 7 x 1,000 val + 1,000 test     ~80 s
                             ours: 7 epochs at batch 32, pixel cache, checkpoints    ~35 s
  whole_transfer             blog: 12 epochs (10 frozen) x 5,000 + 12 x 1,000 + test ~130 s
                             ours: features once, 10 head epochs, 2 fine-tune epochs  ~30 s
  bench_compiled  three compiles ((a), (c), the runner) + the same timings           ~120 s
About 9-10 minutes in all, over the 8 the issue asks for by the compiled bench, which therefore
runs last: `--time-limit` (seconds) skips the steps that would start after it, so the table is
always written; `--skip bench_compiled` leaves it out. The GPU run's step seconds are in its JSON.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sizes:
    """How big each step is on the GPU (the issue's setting) and under --cpu (seconds on 2 cores)."""

    split_images: str  # TRAIN,VAL,TEST of the generated folder
    image_size: str  # WxH of its JPEGs
    classes: int
    bench: list[str]  # overrides of the (a)-(d) bench
    bench_timing: list[str]  # --steps/--warmup/--epochs of the (a)-(d) bench
    frozen: list[str]  # overrides of the frozen-phase bench (besides the feature cache switch)
    frozen_timing: list[str]  # (b)'s --epochs: the recipe's phase 0 epochs unless given here
    whole: list[str]  # overrides of both whole runs (none: the recipes as they are)
    test_workers: int  # pytest-xdist processes for tests/gpu where it is installed (1: none)
    tests_timeout: int
    step_timeout: int


GPU = Sizes(
    split_images="5000,1000,1000",
    image_size="224x224",
    classes=15,
    bench=[
        "model.name=torchvision/resnet50",
        "data.image_size=224",
        "train.batch_size=256",
        "train.mixed_precision=bf16",
        "train.channels_last=true",
    ],
    bench_timing=["--steps", "30", "--warmup", "10", "--epochs", "2"],
    frozen=["train.mixed_precision=bf16", "train.channels_last=true"],
    frozen_timing=["--steps", "20", "--warmup", "5"],  # (b): the 10 epochs of transfer's probe
    whole=[],
    test_workers=4,
    tests_timeout=420,
    step_timeout=420,
)
# timm's test_resnet (0.4M parameters; the same kinds of layers as a ResNet): under --cpu the
# steps prove the script, not a speed, and the test suite runs them.
TINY = [
    "model.name=timm/test_resnet",
    "data.image_size=32",
    "train.batch_size=8",
    "train.eval_batch_size=16",
]
CPU = Sizes(
    split_images="48,12,12",
    image_size="48x40",
    classes=3,
    bench=[*TINY, "train.mixed_precision=bf16", "train.channels_last=true"],  # bf16 autocast on CPU
    bench_timing=["--steps", "2", "--warmup", "1", "--epochs", "2"],
    frozen=[*TINY, "train.mixed_precision=bf16"],
    frozen_timing=["--steps", "2", "--warmup", "1", "--epochs", "2"],
    whole=TINY,  # and every phase 1 epoch (whole_overrides)
    test_workers=1,  # CI's 2 cores: one at a time
    tests_timeout=300,
    step_timeout=240,
)
# On the CPU torch.compile of the model takes minutes per case: the compiled bench is GPU-only
# (tests/integration/test_cpu_precision.py trains a compiled tiny model on the CPU instead).
CPU_SKIPS = {
    "bench_compiled": "torch.compile: minutes per case on a CPU; "
    "tests/integration/test_cpu_precision.py trains a compiled model on the CPU instead",
}
