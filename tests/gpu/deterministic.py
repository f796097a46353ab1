"""`trainer <args>` with PyTorch's determinism switches on, for the GPU tests that compare two runs
(or an interrupted run with an uninterrupted one) weight for weight.

On CUDA: deterministic cuDNN algorithms, no cuDNN autotuning, no TF32 (its ~1e-3 relative
rounding differs between algorithms and batch shapes, and Adam's first steps move each weight by
+-lr whatever the gradient's size: one sign flipped by rounding is a 2e-3 difference), cuBLAS's
fixed workspace, and torch.use_deterministic_algorithms(warn_only=True) (a kernel without a
deterministic version, e.g. adaptive average pooling's backward, warns and runs anyway: such
runs agree within a tolerance, not bit for bit). On the CPU these change nothing the runs do.

STEP_DELAY_S=S   sleep S seconds per training batch loaded (a tiny model's steps take
                 milliseconds: a test that signals the run at step N needs it still running)
"""

from __future__ import annotations

import json
import os
import sys

# cuBLAS reads it when it creates its handle: set before torch touches the GPU.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

from trainer.cli import command  # noqa: E402
from trainer.data import sampling  # noqa: E402

SETTINGS = {
    "cudnn.deterministic": True,
    "cudnn.benchmark": False,
    "allow_tf32": False,
    "use_deterministic_algorithms": "warn_only",
    "CUBLAS_WORKSPACE_CONFIG": os.environ["CUBLAS_WORKSPACE_CONFIG"],
}

if os.environ.get("STEP_DELAY_S"):
    import time

    original_getitems = sampling.SeededView.__getitems__

    def slowed(self, keys):
        time.sleep(float(os.environ["STEP_DELAY_S"]))
        return original_getitems(self, keys)

    sampling.SeededView.__getitems__ = slowed

if __name__ == "__main__":
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)
    print(f"determinism settings: {json.dumps(SETTINGS)}", flush=True)
    sys.exit(command(sys.argv[1:]))
