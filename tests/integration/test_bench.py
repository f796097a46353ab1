"""`trainer bench` on a CPU with a tiny model, tiny generated JPEGs and a few steps.

These check that the command measures every case and prints and writes the same numbers; they
never check how fast anything is (speed is what the command itself reports).
"""

import json
import re

import pytest
from PIL import Image

from tests.conftest import assert_ok, run_cli

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow(reason="times every bench case and a whole run beside the blog script"),
]

TINY = ("model.name=torchvision/resnet18", "data.image_size=32", "train.batch_size=8")
ROW = re.compile(r"^\(([abcd])\) (.+?)\s{2,}(\d+\.\d)\s+(n/a|\d+\.\d\d GiB)\s{2}(.+)$")
RATIO = re.compile(r"^(b/[acd])\s+(\d+\.\d\d)\s{2}\S")
WALL = re.compile(r"^(ours|blog script)\b.*?\s(\d+\.\d)s\s+(n/a|\d+\.\d\d GiB)$")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench") / "jpegs"
    proc = run_cli(
        "trainer",
        "bench",
        "--make-data",
        str(root),
        "--images",
        "60",
        "--size",
        "64x48",
        "--classes",
        "3",
        "--quality",
        "90",
    )
    assert_ok(proc)
    assert f"trainer bench --data {root}" in proc.stdout
    return root


def _final_table(stdout: str) -> list[str]:
    """The lines of the table printed at the end (the header is printed twice: start and end)."""
    return stdout[stdout.rindex("\ncase ") + 1 :].splitlines()


def test_make_data_writes_the_requested_jpegs(jpegs):
    classes = sorted(p.name for p in jpegs.iterdir())
    assert classes == ["class_00", "class_01", "class_02"]
    files = sorted(p for p in jpegs.rglob("*") if p.is_file())
    assert len(files) == 60
    assert [len(list((jpegs / c).iterdir())) for c in classes] == [20, 20, 20]
    sizes = set()
    for path in files:
        with Image.open(path) as img:
            assert (img.format, img.size, img.mode) == ("JPEG", (64, 48), "RGB"), path
            # structured content, not one flat colour
            assert max(hi - lo for lo, hi in img.getextrema()) > 60, path
        sizes.add(path.stat().st_size)
    assert len(sizes) > 30  # every image is different


def test_bench_prints_every_case_and_the_ratios_and_writes_them_as_json(jpegs, tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli(
        "trainer",
        "bench",
        "--data",
        str(jpegs),
        "--steps",
        "3",
        "--warmup",
        "1",
        "--epochs",
        "2",
        *TINY,
        "--json",
        str(out),
    )
    assert_ok(proc)
    lines = _final_table(proc.stdout)
    rows = {m[1]: m for m in map(ROW.match, lines) if m}
    assert sorted(rows) == ["a", "b", "c", "d"], "\n".join(lines)
    for row in rows.values():
        assert float(row[3]) > 0, row[0]
        assert row[4] == "n/a", row[0]  # no GPU memory on a CPU
    assert "data.pipeline" in rows["b"][2]
    assert "epoch 1 is warm-up" in rows["b"][5]
    assert "batch 16, 0 workers" in rows["d"][2]
    ratios = {m[1]: float(m[2]) for m in map(RATIO.match, lines) if m}
    assert sorted(ratios) == ["b/a", "b/c", "b/d"], "\n".join(lines)
    assert all(r > 0 for r in ratios.values())
    header = proc.stdout[: proc.stdout.index("\n")]
    assert header.startswith("trainer bench on cpu: ") and "torch " in header

    result = json.loads(out.read_text())
    assert result["device_type"] == "cpu" and result["device"] and result["torch"]
    settings = result["settings"]
    assert settings["model"] == "torchvision/resnet18" and settings["pretrained"] is False
    assert (settings["image_size"], settings["batch_size"], settings["num_classes"]) == (32, 8, 3)
    assert (settings["precision"], settings["steps"], settings["warmup"]) == ("no", 3, 1)
    assert settings["data_pipeline"] == "auto"
    for key, row in rows.items():
        case = result["cases"][key]
        assert f"{case['images_per_second']:.1f}" == row[3]
        assert case["peak_memory_bytes"] is None
    assert result["cases"]["b"]["settings"]["epochs"] == 2
    for key, value in ratios.items():
        assert f"{result['ratios'][key]:.2f}" == f"{value:.2f}"
        a, b = key.split("/")[::-1]
        expected = (
            result["cases"]["b"]["images_per_second"] / result["cases"][a]["images_per_second"]
        )
        assert result["ratios"][key] == pytest.approx(expected)


def test_whole_run_times_ours_and_the_blog_script(tmp_path):
    root = tmp_path / "veg"
    made = run_cli(
        "trainer",
        "bench",
        "--whole-run",
        "--make-data",
        str(root),
        "--split-images",
        "30,6,6",
        "--size",
        "64x48",
        "--classes",
        "3",
    )
    assert_ok(made)
    counts = {s: len(list((root / s).rglob("*.jpg"))) for s in ("train", "val", "test")}
    assert counts == {"train": 30, "val": 6, "test": 6}
    with Image.open(next((root / "val").rglob("*.jpg"))) as img:
        assert img.size == (64, 48)

    out = tmp_path / "whole.json"
    proc = run_cli(
        "trainer",
        "bench",
        "--whole-run",
        "--data",
        str(root),
        "train.phases.0.epochs=1",
        "train.phases.1.epochs=1",
        "model.name=torchvision/resnet18",
        "data.image_size=32",
        "checkpoint.enabled=false",
        "--json",
        str(out),
    )
    assert_ok(proc)
    tail = proc.stdout[proc.stdout.rindex("\nwhole run ") + 1 :].splitlines()
    walls = {m[1]: float(m[2]) for m in map(WALL.match, tail) if m}
    assert sorted(walls) == ["blog script", "ours"], "\n".join(tail)
    assert all(s > 0 for s in walls.values())
    ratio = next(line for line in tail if line.startswith("blog / ours"))
    shown = float(ratio.split()[3])
    assert shown == pytest.approx(walls["blog script"] / walls["ours"], rel=0.05, abs=0.02)

    result = json.loads(out.read_text())["whole_run"]
    for side in ("ours", "blog"):  # each phase's seconds, within the whole run's
        phases = result[f"{side}_phase_seconds"]
        assert list(phases) == ["head", "finetune"] and all(t > 0 for t in phases.values())
        assert sum(phases.values()) <= result[f"{side}_seconds"]
    assert "phase 'finetune': ours " in proc.stdout
    assert f"{result['ours_seconds']:.1f}" == f"{walls['ours']:.1f}"
    assert f"{result['blog_seconds']:.1f}" == f"{walls['blog script']:.1f}"
    assert result["blog_over_ours"] == pytest.approx(
        result["blog_seconds"] / result["ours_seconds"]
    )
    settings = json.loads(out.read_text())["settings"]
    assert settings["config"] == "resnet50-two-phase"
    assert [(p["name"], p["epochs"], p["freeze"]) for p in settings["phases"]] == [
        ("head", 1, "backbone"),
        ("finetune", 1, "none"),
    ]
    assert settings["split_counts"] == {"train": 30, "val": 6, "test": 6}


def test_json_over_a_file_that_is_not_a_bench_report_is_refused_before_any_work(tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    proc = run_cli(
        "trainer", "bench", "--json", str(mine), "--images", "6", "--classes", "3", cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--json" in proc.stderr and "not a trainer bench report" in proc.stderr
    assert "Traceback" not in proc.stderr and mine.read_text() == '{"my": "notes"}'


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--images", "0"), "--images: expected >= 1, got 0"),
        (("--size", "64by48"), "--size: expected WIDTHxHEIGHT"),
        (("--data", "/nonexistent/photos"), "is not a folder"),
        (("model.nme=x",), "unknown config key 'model.nme'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    proc = run_cli("trainer", "bench", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trainer bench: error: "), proc.stderr
    assert message in lines[0]
