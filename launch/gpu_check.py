"""Is this GPU machine's trainer correct, and how fast is it? The steps of launch/gpu_check.sh.

Each step runs in a process of its own and is recorded in OUT/gpu_check.json as it ends (a check
cut short by its time limit still leaves every finished step on file); a step that fails does
not stop the next: a short GPU slot should give every number it can. The steps:

  wheels        --wheels DIR: DIR/*.whl installed offline into WORK/site, put on PYTHONPATH
  environment   device, versions, and whether `datasets` (every training run imports it) is there
  data          a generated pre-split JPEG folder (`trainer bench --make-data --whole-run`)
  tests         pytest tests/gpu on the check device (TRAINER_CHECK_DEVICE), outcome per test
  bench_eager   `trainer bench` (a)-(d) side by side on that folder
  frozen_features_off, frozen_features_on     the frozen phase 0 of the transfer recipe
  whole_resnet50-two-phase, whole_transfer    `trainer bench --whole-run`: ours vs the blog loop
  bench_compiled  (a)-(d) with train.compile=true: last, the longest and the first to give up

--cpu runs the same steps with tiny sizes on the CPU (for CI); what has no CPU equivalent is
skipped with its reason, in the JSON. The table (gpu_check_report.py) is printed at the end.

Sizes, and the estimate of the GPU run's duration: gpu_check_sizes.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check_report import table_lines, totals  # noqa: E402
from gpu_check_sizes import CPU, CPU_SKIPS, GPU, Sizes  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Check:
    """One run of the check: where it writes, what it runs on, and what it found so far."""

    out: Path
    work: Path
    device: str  # cuda | cpu
    sizes: Sizes
    skip: set[str]
    deadline: float | None = None  # time.monotonic() after which no step starts (--time-limit)
    env: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    def log(self, text: str) -> None:
        with open(self.out / "gpu_check.log", "a", encoding="utf-8") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def left(self, timeout: int) -> int:
        """`timeout`, cut to what is left before the deadline."""
        if self.deadline is None:
            return timeout
        return max(1, min(timeout, int(self.deadline - time.monotonic())))

    def save(self) -> None:
        path = self.out / "gpu_check.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


class StepFailed(Exception):
    """A step ran and did not do what it should; the message says what."""


def run(
    check: Check, args: list[str], timeout: int, env: dict | None = None
) -> subprocess.CompletedProcess:
    """ARGS (a python command line) with the check's environment (and ENV), output to the log;
    at its timeout the whole process group goes (pytest's trainer runs, loader workers)."""
    cmd, timeout = [sys.executable, *args], check.left(timeout)
    check.log(f"$ {' '.join(cmd)}")
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**check.env, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        check.log(out + err + "[killed]")
        raise StepFailed(f"timed out after {timeout} s: {' '.join(args[:4])} ...") from None
    except BaseException:  # Ctrl-C: the step's own session would outlive the check
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    check.log(out + err + f"[exit {proc.returncode}]")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def bench(check: Check, name: str, args: list[str]) -> tuple[dict, str]:
    """`trainer bench ARGS --json`: its report and its printed output; StepFailed on an error."""
    path = check.work / f"{name}.json"
    proc = run(
        check, ["-m", "trainer", "bench", *args, "--json", str(path)], check.sizes.step_timeout
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
        raise StepFailed(f"trainer bench exited {proc.returncode}: {tail[0]}")
    return json.loads(path.read_text()), proc.stdout


def step_wheels(check: Check, wheels: Path) -> dict:
    """Offline install of the wheel folder into WORK/site (no index, no dependencies fetched)."""
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise StepFailed(f"--wheels {wheels}: no .whl files there")
    site = check.work / "site"
    pip = ["-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
    proc = run(check, [*pip, "--target", str(site), *map(str, found)], 300)
    if proc.returncode != 0:
        raise StepFailed(f"pip install of {len(found)} wheels exited {proc.returncode}")
    check.env["PYTHONPATH"] = os.pathsep.join([check.env["PYTHONPATH"], str(site)])
    return {"wheels": [p.name for p in found], "target": str(site)}


def step_environment(check: Check) -> dict:
    """What the check runs on; fails when the device or `datasets` is missing."""
    proc = run(check, [str(Path(__file__).with_name("gpu_check_probe.py"))], 120)
    if proc.returncode != 0:
        raise StepFailed("python could not import torch/torchvision")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    check.report.update(
        device=found["device_name"] or _cpu_name(),
        torch=found["torch"],
        torchvision=found["torchvision"],
    )
    if check.device == "cuda" and not found["cuda_available"]:
        raise StepFailed("torch sees no CUDA device (for a dry run on the CPU: --cpu)")
    if found["datasets_error"]:
        raise StepFailed(
            f"`import datasets` failed ({found['datasets_error']}), and every training run "
            "imports it (trainer/data/pipelines/pil.py, via choose.py and features.py): give "
            "--wheels DIR with datasets, dill and multiprocess (README: the GPU check)"
        )
    return found


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    return f"CPU ({os.cpu_count()} CPUs)"


def step_data(check: Check) -> dict:
    """The pre-split JPEG folder every bench step reads."""
    s, root = check.sizes, check.work / "data"
    shutil.rmtree(root, ignore_errors=True)  # a rerun in the same --work: written afresh
    args = ["--make-data", str(root), "--whole-run", "--split-images", s.split_images]
    args += ["--size", s.image_size, "--classes", str(s.classes)]
    proc = run(check, ["-m", "trainer", "bench", *args], check.sizes.step_timeout)
    if proc.returncode != 0:
        raise StepFailed(f"trainer bench --make-data exited {proc.returncode}")
    return {"root": str(root), "split_images": s.split_images, "size": s.image_size}


def step_tests(check: Check) -> dict:
    """pytest tests/gpu on the check device; every test's outcome (and measured tolerances)."""
    from gpu_check_report import read_junit

    xml, records = check.out / "gpu_check_tests.xml", check.work / "records.jsonl"
    env = {"TRAINER_CHECK_DEVICE": check.device, "TRAINER_CHECK_RECORD": str(records)}
    pytest = ["-m", "pytest", "tests/gpu", "-rA", "-p", "no:cacheprovider", f"--junitxml={xml}"]
    pytest.append(f"--basetemp={check.work / 'pytest'}")  # apart from any pytest around this one
    if check.sizes.test_workers > 1 and importlib.util.find_spec("xdist"):
        pytest += ["-n", str(check.sizes.test_workers)]  # the runs are short: start-up bound
    records.unlink(missing_ok=True)
    proc = run(check, pytest, check.sizes.tests_timeout, env)
    if not xml.exists():
        raise StepFailed(f"pytest exited {proc.returncode} without a report")
    tests = read_junit(xml)
    measured = (
        [json.loads(line) for line in records.read_text().splitlines()] if records.exists() else []
    )
    result = {"tests": tests, "measured": measured, "counts": totals(tests)}
    failed = [name for name, t in tests.items() if t["outcome"] == "failed"]
    if failed or proc.returncode != 0:
        check.report["steps"]["tests"] = {**result, "status": "failed"}
        raise StepFailed(
            f"{len(failed)} test(s) failed: {', '.join(failed) or f'exit {proc.returncode}'}"
        )
    return result


def step_bench(check: Check, compiled: bool) -> dict:
    """(a)-(d) side by side at the bench sizes, eager or compiled."""
    s = check.sizes
    overrides = [*s.bench, f"train.compile={str(compiled).lower()}"]
    report, _ = bench(
        check,
        "bench_compiled" if compiled else "bench_eager",
        ["--data", str(check.work / "data"), *s.bench_timing, *overrides],
    )
    cases = {k: c["images_per_second"] for k, c in report["cases"].items()}
    return {"images_per_second": cases, "ratios": report["ratios"], "settings": report["settings"]}


def frozen_recipe() -> str:
    """The transfer recipe when this checkout has it, else resnet50-two-phase (same phase 0)."""
    have = (REPO / "trainer" / "config" / "recipes" / "transfer.yaml").exists()
    return "transfer" if have else "resnet50-two-phase"


FEATURES = re.compile(r"features of (\d+) images computed once in ([\d.]+)s")


def step_frozen(check: Check, cached: bool) -> dict:
    """Phase 0 (backbone frozen, BatchNorm frozen, no augmentation) with the feature cache on/off:
    the runner's epoch speed, and the phase's seconds (feature extraction included)."""
    s, recipe = check.sizes, frozen_recipe()
    overrides = [*s.frozen, "train.freeze_bn=true", "train.phases.0.augment=false"]
    overrides.append(f"train.feature_cache={str(cached).lower()}")
    name = f"frozen_features_{'on' if cached else 'off'}"
    args = ["--data", str(check.work / "data"), "--config", recipe, "--phase", "0"]
    timing = list(s.frozen_timing)
    if "--epochs" not in timing:  # the phase as the recipe trains it
        from trainer.config import load_config

        timing += ["--epochs", str(load_config(recipe).train.phases[0].epochs)]
    report, stdout = bench(check, name, [*args, *timing, *overrides])
    runner = report["cases"]["b"]
    found = FEATURES.search(stdout)
    if cached and not found:
        raise StepFailed("train.feature_cache=true, but the run computed no features")
    features_s = float(found[2]) if found else 0.0
    per_epoch = [
        runner["settings"]["train_samples"] / ips
        for ips in runner["settings"]["epoch_images_per_second"]
    ]
    return {
        "recipe": recipe,
        "images_per_second": runner["images_per_second"],
        "epoch_seconds": per_epoch,
        "features_seconds": features_s,
        "phase_seconds": features_s + sum(per_epoch),
    }


def whole_overrides(check: Check, recipe: str) -> list[str]:
    """--cpu: the tiny model and every phase 1 epoch; on the GPU, the recipe as it is."""
    if check.device == "cuda":
        return list(check.sizes.whole)
    from trainer.config import load_config

    phases = len(load_config(recipe).train.phases)
    return [*check.sizes.whole, *(f"train.phases.{n}.epochs=1" for n in range(phases))]


def step_whole(check: Check, label: str) -> dict:
    """`trainer bench --whole-run` of one recipe: ours vs the blog loop, wall clock."""
    recipe = label if label != "transfer" else frozen_recipe()
    args = ["--whole-run", "--data", str(check.work / "data"), "--config", recipe]
    report, _ = bench(check, f"whole_{label}", [*args, *whole_overrides(check, recipe)])
    w = report["whole_run"]
    note = "" if recipe == label else f"{label} is not in this checkout: {recipe} ran instead"
    return {
        "recipe": recipe,
        "note": note,
        "ours_seconds": w["ours_seconds"],
        "blog_seconds": w["blog_seconds"],
        "blog_over_ours": w["blog_over_ours"],
        "ours_test_accuracy": w["ours_test_accuracy"],
        "blog_test_accuracy": w["blog_test_accuracy"],
        "ours_pipeline": w["ours_pipeline"],
    }


def steps(check: Check, wheels: Path | None) -> list[tuple[str, object]]:
    """The steps in order, each a (name, no-argument callable returning its record)."""
    out: list[tuple[str, object]] = []
    if wheels:
        out.append(("wheels", lambda: step_wheels(check, wheels)))
    out += [
        ("environment", lambda: step_environment(check)),
        ("data", lambda: step_data(check)),
        ("tests", lambda: step_tests(check)),
        ("bench_eager", lambda: step_bench(check, compiled=False)),
        ("frozen_features_off", lambda: step_frozen(check, cached=False)),
        ("frozen_features_on", lambda: step_frozen(check, cached=True)),
        ("whole_resnet50-two-phase", lambda: step_whole(check, "resnet50-two-phase")),
        ("whole_transfer", lambda: step_whole(check, "transfer")),
        ("bench_compiled", lambda: step_bench(check, compiled=True)),
    ]
    return out


def run_step(check: Check, name: str, fn) -> None:
    """One step: its record, status and seconds in the report, saved at once."""
    skipped = CPU_SKIPS.get(name) if check.device == "cpu" else None
    if name in check.skip:
        skipped = "--skip"
    elif check.deadline is not None and time.monotonic() >= check.deadline:
        skipped = "out of time (--time-limit)"
    print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
    if skipped:
        check.report["steps"][name] = {"status": "skipped", "reason": skipped}
        print(f"    skipped: {skipped}", flush=True)
        check.save()
        return
    start = time.perf_counter()
    try:
        record = {**fn(), "status": "ok"}
    except Exception as e:  # noqa: BLE001 - a failed step is recorded, the next one still runs
        kind = "" if isinstance(e, StepFailed) else f"{type(e).__name__}: "
        record = {**check.report["steps"].get(name, {}), "status": "failed", "error": f"{kind}{e}"}
        print(f"    FAILED: {record['error']}", flush=True)
    record["seconds"] = round(time.perf_counter() - start, 1)
    check.report["steps"][name] = record
    check.save()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch/gpu_check.sh", description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="the same steps, tiny, on the CPU")
    p.add_argument("--out", default="gpu_check", metavar="DIR", help="where the report goes")
    p.add_argument("--wheels", metavar="DIR", help="wheels to install offline (datasets, ...)")
    p.add_argument("--work", metavar="DIR", help="scratch folder (default: a temporary one)")
    for flag, meaning in (("--skip", "leave a step out"), ("--only", "run only these steps")):
        p.add_argument(flag, action="append", default=[], metavar="STEP", help=meaning)
    p.add_argument(
        "--time-limit",
        type=float,
        metavar="S",
        help="start no step after S seconds, cut the one running then (the table is still written)",
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("gpu_check.json", "gpu_check.txt", "gpu_check.log", "gpu_check_tests.xml"):
        (out / stale).unlink(missing_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _check(args, argv, out, work)
    except KeyboardInterrupt:
        print(f"gpu_check: interrupted; the finished steps are in {out / 'gpu_check.json'}")
        return 130
    finally:
        if not args.work:  # the generated JPEGs and runs: ours, in a temporary folder
            shutil.rmtree(work, ignore_errors=True)


def _check(args: argparse.Namespace, argv: list[str], out: Path, work: Path) -> int:
    """The steps asked for, then the table; 1 if a step failed."""
    device = "cpu" if args.cpu else "cuda"
    check = Check(out, work, device, CPU if args.cpu else GPU, set(args.skip))
    if args.time_limit:
        check.deadline = time.monotonic() + args.time_limit
    check.env = child_env(device, work)
    check.report = {
        "mode": device,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["launch/gpu_check.sh", *argv]),
        "sizes": asdict(check.sizes),
        "steps": {},
    }
    started = time.perf_counter()
    for name, fn in steps(check, Path(args.wheels) if args.wheels else None):
        if not args.only or name in args.only:
            run_step(check, name, fn)
    check.report["seconds"] = round(time.perf_counter() - started, 1)
    failed = [n for n, s in check.report["steps"].items() if s["status"] == "failed"]
    check.report["failed_steps"] = failed
    check.save()
    table = "\n".join(table_lines(check.report))
    (out / "gpu_check.txt").write_text(table + "\n", encoding="utf-8")
    print("\n" + table, flush=True)
    return 1 if failed else 0


def child_env(device: str, work: Path) -> dict:
    """The steps' environment: nothing downloaded, W&B off, caches in WORK, the checkout importable;
    under --cpu no GPU visible."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "PYTHONUNBUFFERED": "1",
        "TRAINER_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "TRAINER_CACHE_DIR": str(work / "cache"),
        "TRAINER_PROGRESS_SECONDS": "30",
    }
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
