"""Which output paths `trainer predict` and `trainer eval` may replace: only what they wrote before.

`--out`, `--json` and `--report` are checked before any work (files.check_replaceable): a path
that holds anything else, a user's own file or a training run folder, is refused.
"""

from __future__ import annotations

from pathlib import Path

from trainer.evaluation.predict import predictions_header
from trainer.files import check_replaceable, first_line, read_json_or_none

PREDICTION_KEYS = {"path", "labels", "probabilities"}
REPORT_NAMES = {"report.json", "report.md", "predictions.csv", "plots"}
# The report's plots; reliability, ROC/PR and coverage come with its decisions (report.decisions).
REPORT_PLOTS = {
    "confusion_matrix.png",
    "mistakes.png",
    "reliability.png",
    "roc_pr.png",
    "coverage.png",
}


def is_predictions_file(path: Path) -> bool:
    """A CSV or JSON that write_predictions wrote."""
    line = first_line(path)
    if line is None:
        return False
    cells = line.split(",")
    if len(cells) % 2 == 1 and cells == predictions_header((len(cells) - 1) // 2):
        return True
    rows = read_json_or_none(path)
    return isinstance(rows, list) and all(
        isinstance(r, dict) and set(r) == PREDICTION_KEYS for r in rows
    )


def is_metrics_json(path: Path) -> bool:
    """A JSON that `trainer eval --json` wrote."""
    result = read_json_or_none(path)
    return isinstance(result, dict) and {"accuracy", "class_names"} <= set(result)


def is_eval_report(folder: Path) -> bool:
    """A folder that `trainer eval --report` wrote: report.json of the report's shape, report.md,
    predictions.csv and plots/ with its PNGs, nothing else (a run folder holds its model, config, ...)."""
    names = {p.name for p in folder.iterdir()}
    if "report.json" not in names or not names <= REPORT_NAMES:
        return False
    plots = folder / "plots"
    if plots.exists() and not (
        plots.is_dir() and {p.name for p in plots.iterdir()} <= REPORT_PLOTS
    ):
        return False
    report_json = folder / "report.json"
    content = read_json_or_none(report_json) if report_json.is_file() else None
    return isinstance(content, dict) and {"overall", "per_class"} <= set(content)


def check_outputs(
    out: str | None = None, json_out: str | None = None, report_dir: str | None = None
) -> None:
    """Refuse, before any work, an output path that holds something predict/eval did not write."""
    if out is not None and out != "-":
        check_replaceable(
            Path(out), "--out", is_predictions_file, "a predictions file written by trainer predict"
        )
    if json_out is not None:
        check_replaceable(
            Path(json_out), "--json", is_metrics_json, "a metrics file written by trainer eval"
        )
    if report_dir is not None:
        what = "a report folder written by trainer eval --report"
        if (Path(report_dir) / "trainer-run.json").is_file():
            what += " (it is a training run folder)"
        check_replaceable(Path(report_dir), "--report", is_eval_report, what, folder=True)
