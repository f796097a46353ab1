import pytest
import torch

from trainer.config import ModelConfig, OptimConfig
from trainer.evaluation.metrics import classification_metrics
from trainer.model.classifier import build_model, set_frozen
from trainer.train.optim import build_optimizer, lr_factor


def test_step_decay_every_30_epochs_by_a_tenth():
    cfg = OptimConfig(scheduler="step", step_epochs=30, gamma=0.1)
    spe = 10  # steps per epoch
    assert lr_factor(0, cfg, spe, 900) == 1.0
    assert lr_factor(29 * spe + 9, cfg, spe, 900) == 1.0
    assert lr_factor(30 * spe, cfg, spe, 900) == pytest.approx(0.1)
    assert lr_factor(60 * spe, cfg, spe, 900) == pytest.approx(0.01)


def test_cosine_warms_up_linearly_then_decays_to_zero():
    cfg = OptimConfig(scheduler="cosine", warmup_epochs=1)
    spe, total = 4, 40
    assert [lr_factor(s, cfg, spe, total) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, cfg, spe, total) == pytest.approx(1.0)
    assert lr_factor(22, cfg, spe, total) == pytest.approx(0.5)
    assert lr_factor(total, cfg, spe, total) == pytest.approx(0.0)


def test_head_gets_its_learning_rate_multiplier_and_frozen_params_are_left_out():
    model, _ = build_model(ModelConfig(name="torchvision/resnet18", pretrained=False), 3)
    cfg = OptimConfig(optimizer="sgd", lr=5e-5, head_lr_mult=10, momentum=0.9, weight_decay=1e-3)
    opt = build_optimizer(model, cfg)
    lrs = {(g["name"].split(".")[0], round(g["lr"], 12)) for g in opt.param_groups}  # +- decay
    assert lrs == {("backbone", 5e-5), ("head", 5e-4)}
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    set_frozen(model, "backbone")
    opt = build_optimizer(model, OptimConfig(optimizer="adam"))
    assert [g["name"] for g in opt.param_groups] == ["head", "head.no_decay"]


def test_metrics_match_a_hand_computation_with_a_never_predicted_class():
    # 4 classes; class 3 is never predicted; class 2 has no samples.
    labels = torch.tensor([0, 0, 1, 1, 3, 3])
    top1 = torch.tensor([0, 1, 1, 1, 0, 1])
    topk = torch.stack([top1, (top1 + 1) % 4, (top1 + 2) % 4], dim=1)
    losses = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    m = classification_metrics(topk, labels, losses, num_classes=4)
    assert m["samples"] == 6
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["loss"] == pytest.approx(0.35)
    assert m["per_class_accuracy"] == [0.5, 1.0, None, 0.0]
    assert m["support"] == [2, 2, 0, 2]
    assert m["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0]]
    assert "top5_accuracy" not in m  # only for more than 5 classes


def test_top5_for_more_than_five_classes():
    labels = torch.tensor([0, 1])
    topk = torch.tensor([[5, 4, 3, 2, 0], [5, 4, 3, 2, 6]])
    m = classification_metrics(topk, labels, torch.zeros(2), num_classes=7)
    assert m["accuracy"] == 0.0 and m["top5_accuracy"] == 0.5
