"""The digits demo: a real data set (scikit-learn's handwritten digits), a real accuracy bar."""

import json

import pytest

from tests.conftest import assert_ok, run_cli

pytestmark = pytest.mark.integration


def test_digits_demo_reaches_90_percent_test_accuracy(tmp_path):
    run = tmp_path / "demo"
    proc = run_cli(
        "trainer", "demo", "--data", str(tmp_path / "digits"), "--output-dir", str(run), timeout=900
    )
    assert_ok(proc)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_samples"] == 179  # 10% of 1,797, stratified
    assert summary["test_accuracy"] >= 0.90, summary["test_accuracy"]
    assert "test accuracy" in proc.stdout and str(run / "model") in proc.stdout
    # The command the demo suggests works as printed (it once wrote over the run's own
    # predictions.csv, which predict rightly refuses).
    suggested = next(line for line in proc.stdout.splitlines() if line.startswith("try: "))
    assert_ok(run_cli(*suggested.removeprefix("try: ").split()))
