"""Each accuracy switch of issue 'training tricks' does what it says."""

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from tests.conftest import make_folder
from trainer.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from trainer.data.splits import scan
from trainer.data.transforms import IMAGENET, train_transform
from trainer.model.classifier import build_model, freeze_batchnorm, set_frozen
from trainer.train.ema import ModelEMA
from trainer.train.losses import Criterion, balanced_class_weights, batch_mixer
from trainer.train.optim import build_optimizer, no_decay_names
from trainer.train.state import Progress


def _resnet18(classes=3):
    torch.manual_seed(0)
    return build_model(ModelConfig(name="torchvision/resnet18", pretrained=False), classes)[0]


@pytest.mark.parametrize(
    "mix", [{"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}]
)
def test_mixup_cutmix_targets_are_soft_and_sum_to_one(mix):
    mixer = batch_mixer(TrainConfig(**mix), num_classes=4)
    torch.manual_seed(1)
    images, labels = torch.randn(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    mixed, targets = mixer(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 4)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8))
    assert (targets < 1).any()  # actually mixed
    assert batch_mixer(TrainConfig(), 4) is None


def test_loss_takes_soft_targets_label_smoothing_and_class_weights():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    smooth = Criterion(TrainConfig(label_smoothing=0.1))(logits, labels)
    targets = F.one_hot(labels, 3).float() * 0.9 + 0.1 / 3
    manual = -(targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    assert smooth == pytest.approx(float(manual), rel=1e-6)
    soft = Criterion(TrainConfig())(logits, targets)  # the same targets given as probabilities
    assert soft == pytest.approx(float(manual), rel=1e-6)
    weights = balanced_class_weights([90, 10])
    assert weights.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])


def test_no_decay_groups_hold_exactly_the_norm_and_bias_parameters():
    model = _resnet18()
    expected = {
        f"{mod_name}.{p_name}"
        for mod_name, mod in model.named_modules()
        for p_name, _ in mod.named_parameters(recurse=False)
        if isinstance(mod, torch.nn.BatchNorm2d) or p_name == "bias"
    }
    assert no_decay_names(model) == expected
    opt = build_optimizer(model, OptimConfig(weight_decay=0.05))
    names = dict(zip(map(id, model.parameters()), (n for n, _ in model.named_parameters())))
    for group in opt.param_groups:
        in_group = {names[id(p)] for p in group["params"]}
        if group["weight_decay"] == 0:
            assert in_group <= expected
        else:
            assert group["weight_decay"] == 0.05 and not in_group & expected
    off = build_optimizer(model, OptimConfig(weight_decay=0.05, no_decay_norm_bias=False))
    assert {g["weight_decay"] for g in off.param_groups} == {0.05}


def test_layer_wise_lr_decay_scales_each_backbone_block():
    model = _resnet18()
    opt = build_optimizer(model, OptimConfig(lr=1.0, head_lr_mult=1.0, layer_decay=0.5))
    lr_of = {}
    for group in opt.param_groups:
        for name in group["param_names"]:
            lr_of[name] = group["lr"]
    # resnet18 blocks: conv1, bn1, layer1, layer2, layer3, then layer4 (over half of all
    # parameters) split into layer4.0, layer4.1 -> depths 1..7
    assert lr_of["head.0.weight"] == 1.0
    assert lr_of["backbone.layer4.1.conv2.weight"] == 1.0
    assert lr_of["backbone.layer4.0.conv2.weight"] == 0.5
    assert lr_of["backbone.layer3.0.conv1.weight"] == 0.25
    assert lr_of["backbone.conv1.weight"] == 0.5**6


@pytest.mark.parametrize(
    "arch, blocks", [("efficientnet_b0", 12), ("vit_b_16", 16), ("convnext_tiny", 11)]
)
def test_layer_wise_lr_decay_finds_the_blocks_of_other_backbones(arch, blocks):
    model = build_model(ModelConfig(name=f"torchvision/{arch}", pretrained=False), 3)[0]
    opt = build_optimizer(model, OptimConfig(lr=1.0, layer_decay=0.5))
    backbone_lrs = {g["lr"] for g in opt.param_groups if g["name"].startswith("backbone")}
    assert len(backbone_lrs) == blocks  # one learning rate per block, not one for everything


def test_ema_moves_by_the_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # first update: decay min(0.9, 1/10) = 0.1
    assert ema.module.weight.item() == pytest.approx(0.9)
    ema.updates = 1000  # past the warm-up: the configured decay
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.9 * 0.9 + 0.1 * 1.0)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_frozen_batchnorm_statistics_do_not_change_in_the_frozen_phase():
    model = _resnet18()
    set_frozen(model, "backbone")
    bn = model.backbone.bn1
    before = bn.running_mean.clone()
    model.train()
    freeze_batchnorm(model.backbone)
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(bn.running_mean, before)
    model.train()  # without freeze_bn the statistics move
    model(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(bn.running_mean, before)


def test_select_metric_and_early_stopping_bookkeeping():
    p = Progress(metric="val_loss")
    assert p.improves({"accuracy": 0.5, "loss": 1.0})
    p.record_best({"accuracy": 0.5, "loss": 1.0})
    assert p.improves({"accuracy": 0.4, "loss": 0.9})  # lower loss wins, whatever the accuracy
    assert not p.improves({"accuracy": 0.9, "loss": 1.1})
    q = Progress(metric="val_accuracy")
    q.record_best({"accuracy": 0.8, "loss": 0.5})
    assert q.improves({"accuracy": 0.8, "loss": 0.4})  # tie on accuracy: lower loss
    assert not q.improves({"accuracy": 0.8, "loss": 0.6})


def test_augmentation_switches_build_the_transforms():
    cfg = DataConfig(vflip=True, auto_augment="trivial", random_erasing=0.5)
    ops = [type(t) for t in train_transform(IMAGENET.with_size(32), cfg).transforms]
    assert {v2.RandomVerticalFlip, v2.TrivialAugmentWide, v2.RandomErasing} <= set(ops)
    ops = [
        type(t)
        for t in train_transform(
            IMAGENET.with_size(32), DataConfig(auto_augment="randaugment")
        ).transforms
    ]
    assert v2.RandAugment in ops and v2.RandomErasing not in ops


def test_a_class_with_few_images_is_warned_about(tmp_path):
    root = make_folder(tmp_path / "d", ["big", "rare"], 30)
    for path in sorted((root / "rare").iterdir())[5:]:
        path.unlink()
    index = scan(DataConfig(root=str(root)))
    assert any("'rare'" in note and "only" in note for note in index.notes)
    assert not any("'big'" in note for note in index.notes)
