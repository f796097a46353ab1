import math

import pytest
import torch

from trainer.evaluation.metrics import classification_metrics, expected_calibration_error
from trainer.evaluation.report import build_report, confident_mistakes, render_markdown


def _fixed_predictions():
    # 4 classes; class 3 is never predicted; class 2 has no samples but is predicted once.
    labels = torch.tensor([0, 0, 0, 1, 1, 3, 3])
    top1 = torch.tensor([0, 0, 1, 1, 2, 0, 1])
    conf = torch.tensor([0.9, 0.8, 0.6, 0.7, 0.95, 0.55, 0.85])
    topk = torch.stack([top1, (top1 + 1) % 4], dim=1)
    return topk, labels, torch.zeros(7), conf


def test_report_numbers_match_a_hand_computation():
    topk, labels, losses, conf = _fixed_predictions()
    m = classification_metrics(topk, labels, losses, 4, confidence=conf)
    # confusion rows=true: 0 -> [2,1,0,0], 1 -> [0,1,1,0], 2 -> [0,0,0,0], 3 -> [1,1,0,0]
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert m["accuracy"] == pytest.approx(3 / 7)
    assert m["precision"] == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0])  # class 3 never predicted: 0
    assert m["recall"] == pytest.approx([2 / 3, 1 / 2, 0.0, 0.0])
    f1_0, f1_1 = 2 / 3, 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)
    assert m["f1"] == pytest.approx([f1_0, f1_1, 0.0, 0.0])
    assert m["balanced_accuracy"] == pytest.approx(
        (2 / 3 + 1 / 2 + 0.0) / 3
    )  # classes with samples
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1 + 0 + 0) / 4)  # true or predicted classes
    assert m["per_class_accuracy"][2] is None
    assert m["confusion_matrix_normalized"][0] == pytest.approx([2 / 3, 1 / 3, 0, 0])
    assert m["confusion_matrix_normalized"][2] == [0, 0, 0, 0]


def test_expected_calibration_error_by_hand():
    conf = torch.tensor([0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([True, False, True, True])
    # bin (0.933, 1]: acc 0.5 vs conf 0.95 -> 0.45 x 2/4; bin (0.533, 0.6]: acc 1 vs 0.55 -> 0.45 x 2/4
    assert expected_calibration_error(conf, correct) == pytest.approx(0.45)
    assert expected_calibration_error(torch.tensor([1.0, 1.0]), torch.tensor([True, True])) == 0.0


def test_confident_mistakes_are_sorted_by_confidence_and_map_back_to_files():
    topk, labels, losses, conf = _fixed_predictions()
    preds = {"topk": topk, "label": labels, "confidence": conf, "index": torch.arange(7)}
    items = [(f"img{i}.png", int(label)) for i, label in enumerate(labels)]
    mistakes = confident_mistakes(preds, items)
    assert [m["path"] for m in mistakes] == ["img4.png", "img6.png", "img2.png", "img5.png"]
    assert mistakes[0] == {
        "path": "img4.png",
        "true": 1,
        "predicted": 2,
        "confidence": pytest.approx(0.95),
    }


def test_markdown_has_overall_and_per_class_tables():
    topk, labels, losses, conf = _fixed_predictions()
    m = classification_metrics(topk, labels, losses, 4, confidence=conf)
    names = ["cat", "dog", "猫", "fox"]
    report = build_report(m, names, [], split="test")
    text = render_markdown(report, {"confusion matrix": "plots/confusion_matrix.png"})
    assert "| balanced accuracy (mean recall) |" in text and "| 猫 | 0 |" in text
    assert "![confusion matrix](plots/confusion_matrix.png)" in text
    assert report["most_confused"][0]["count"] == 1 and not math.isnan(report["overall"]["ece"])


def _write(tmp_path, classes, decide=True, n=60, seed=0):
    """write_report on random predictions of a classifier (logits x 10: overconfident)."""
    import json

    from trainer.evaluation import calibration
    from trainer.evaluation.report import decisions, write_report

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(classes), (n,), generator=g)
    logits = 10 * (torch.randn(n, len(classes), generator=g) + 2 * torch.eye(len(classes))[labels])
    probs = calibration.probabilities(logits)
    topk = probs.topk(min(5, len(classes)), dim=1).indices
    m = classification_metrics(topk, labels, torch.zeros(n), len(classes), probs.max(1).values)
    d = None
    if decide:
        d = decisions(logits, labels, classes, calibration.fit_temperature(logits, labels))
    written = write_report(tmp_path, m, classes, [], decisions=d, split="test")
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    return written, report, (tmp_path / "report.md").read_text(encoding="utf-8")


def test_decisions_add_their_sections_and_plots_to_the_report(tmp_path):
    written, report, md = _write(tmp_path, ["cat", "dog", "fox"])
    for name in ("reliability", "roc_pr", "coverage"):
        assert written[name] == tmp_path / "plots" / f"{name}.png" and written[name].stat().st_size
        assert f"(plots/{name}.png)" in md
    assert report["calibration"]["temperature"] > 1  # the logits were made overconfident
    assert report["calibration"]["nll_after"] < report["calibration"]["nll_before"]
    assert len(report["roc_pr"]["per_class"]) == 3 and report["coverage"]["images"] == 60
    assert "thresholds" not in report and "## Thresholds" not in md
    for section in ("## Calibration", "## Coverage", "## ROC and precision-recall"):
        assert section in md
    assert "--min-confidence P" in md and "| macro mean (3 classes) |" in md
    cal = report["calibration"]
    assert f"| {cal['nll_before']:.4f} | {cal['nll_after']:.4f} |" in md
    assert "| 0 (all) | 60 | 100.0% |" in md
    for row in report["coverage"]["table"][1:]:
        assert f"| {row['threshold']:g} | {row['answered']} | {row['share']:.1%} |" in md


def test_two_classes_get_the_threshold_table_of_the_second_class(tmp_path):
    _, report, md = _write(tmp_path, ["straight", "tilted"])
    assert report["thresholds"]["positive"] == "tilted"
    assert "## Thresholds for tilted" in md and "| t | called tilted | precision | recall |" in md
    assert len(report["thresholds"]["table"]) == 9


def test_without_decisions_the_report_is_what_it_was(tmp_path):
    written, report, md = _write(tmp_path, ["cat", "dog", "fox"], decide=False)
    assert set(written) == {"confusion_matrix", "mistakes"}
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "confusion_matrix.png",
        "mistakes.png",
    ]
    assert not {"calibration", "roc_pr", "coverage", "thresholds"} & set(report)
    assert "## Calibration" not in md and "## Coverage" not in md and "ROC" not in md
