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
