"""predictions.csv: every evaluated image once, in the split's order, with what the model said."""

import csv

import torch

from trainer.evaluation.report import write_predictions


def test_one_row_per_image_in_the_splits_order(tmp_path):
    root = tmp_path / "data"
    items = [(str(root / "cat" / "1.png"), 0), (str(root / "dog" / "2.png"), 1)]
    items.append((str(root / "fox" / "3.png"), 2))
    preds = {  # gathered in another order than the split's, as DDP gathers them
        "index": torch.tensor([2, 0, 1]),
        "label": torch.tensor([2, 0, 1]),
        "topk": torch.tensor([[2, 0, 1], [1, 0, 2], [1, 2, 0]]),
        "confidence": torch.tensor([0.9, 0.6, 0.75]),
        "loss": torch.tensor([0.1, 1.5, 0.3]),
    }
    out = tmp_path / "predictions.csv"
    write_predictions(out, preds, items, ["cat", "dog", "fox"], root)
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {
            "path": "cat/1.png",
            "true": "cat",
            "predicted": "dog",
            "confidence": "0.600000",
            "loss": "1.500000",
            "correct": "0",
            "top3": "dog|cat|fox",
        },
        {
            "path": "dog/2.png",
            "true": "dog",
            "predicted": "dog",
            "confidence": "0.750000",
            "loss": "0.300000",
            "correct": "1",
            "top3": "dog|fox|cat",
        },
        {
            "path": "fox/3.png",
            "true": "fox",
            "predicted": "fox",
            "confidence": "0.900000",
            "loss": "0.100000",
            "correct": "1",
            "top3": "fox|cat|dog",
        },
    ]


def test_no_images_give_the_header_only(tmp_path):
    out = tmp_path / "predictions.csv"
    write_predictions(out, {}, [], ["a", "b"], tmp_path)
    assert out.read_text(encoding="utf-8") == "path,true,predicted,confidence,loss,correct,top2\n"
