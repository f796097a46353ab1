import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from trainer.config import ModelConfig
from trainer.model.classifier import build_model, count_trainable, set_frozen
from trainer.model.folder import load_model_folder, save_model_folder
from trainer.model.safeload import ModelError


def test_linear_head_replaces_the_imagenet_classifier():
    model, pre = build_model(ModelConfig(name="torchvision/resnet18", pretrained=False), 7)
    assert isinstance(model.backbone.fc, torch.nn.Identity)
    linear = model.head[-1]
    assert (linear.in_features, linear.out_features) == (512, 7)
    assert torch.all(linear.bias == 0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert (pre.image_size, pre.resize_size) == (224, 256)  # from torchvision's weight metadata


def test_mlp_head_of_the_resnet50_recipe():
    cfg = ModelConfig(
        name="torchvision/resnet50", pretrained=False, head="mlp", head_hidden=128, head_dropout=0.1
    )
    model, _ = build_model(cfg, 15)
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2048, 128), (128, 15)]
    assert any(isinstance(m, torch.nn.Dropout) for m in model.head)


def test_non_resnet_classifier_is_found_and_replaced():
    model, _ = build_model(ModelConfig(name="torchvision/mobilenet_v3_small", pretrained=False), 3)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)


def test_freezing_leaves_only_the_head_trainable():
    model, _ = build_model(ModelConfig(name="torchvision/resnet18", pretrained=False), 4)
    total = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.head.parameters())
    set_frozen(model, "backbone")
    assert count_trainable(model) == head == 512 * 4 + 4
    set_frozen(model, "none")
    assert count_trainable(model) == total


def _reference_resnet18():
    torch.manual_seed(123)
    return torchvision.models.resnet18(weights=None)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_loads_into_the_backbone(tmp_path, suffix):
    ref = _reference_resnet18()
    path = tmp_path / f"r18{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": ref.state_dict()}, path)  # a common checkpoint wrapper
    else:
        save_file(ref.state_dict(), path)
    model, _ = build_model(ModelConfig(name="torchvision/resnet18", pretrained=str(path)), 5)
    assert torch.equal(model.backbone.conv1.weight, ref.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)


def test_old_weights_files_without_num_batches_tracked_load(tmp_path):
    # torchvision's V1 ImageNet files predate BatchNorm's num_batches_tracked buffer.
    ref = _reference_resnet18()
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    model, _ = build_model(
        ModelConfig(name="torchvision/resnet18", pretrained=str(tmp_path / "old.pth")), 2
    )
    assert torch.equal(model.backbone.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_inception_is_built_without_aux_heads_and_loads_files_that_have_them(tmp_path):
    ref = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    torch.save(ref.state_dict(), tmp_path / "inception.pth")
    model, pre = build_model(
        ModelConfig(name="torchvision/inception_v3", pretrained=str(tmp_path / "inception.pth")), 4
    )
    model.train()
    assert model(torch.randn(2, 3, 96, 96)).shape == (2, 4)  # train mode: plain logits, no tuple
    assert torch.equal(model.backbone.Conv2d_1a_3x3.conv.weight, ref.Conv2d_1a_3x3.conv.weight)
    assert pre.image_size == 299


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(ModelError, match="does not fit"):
        build_model(ModelConfig(name="torchvision/resnet18", pretrained=str(path)), 5)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Evil()}, f)
    with pytest.raises(ModelError, match="weights_only"):
        build_model(ModelConfig(name="torchvision/resnet18", pretrained=str(path)), 2)
    assert not (tmp_path / "pwned").exists()


def test_offline_without_cached_weights_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("TRAINER_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(name="torchvision/resnet18", pretrained=True), 2)
    message = str(err.value)
    assert "resnet18-f37072fd.pth" in message  # the file to put in place
    assert "model.pretrained=false" in message and "model.pretrained=/path" in message
    assert "trainer weights download torchvision/resnet18" in message  # the command to run


def test_cached_library_weights_are_used_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("TRAINER_OFFLINE", "1")
    ref = _reference_resnet18()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(ref.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model, _ = build_model(ModelConfig(name="torchvision/resnet18", pretrained=True), 2)
    assert torch.equal(model.backbone.conv1.weight, ref.conv1.weight)


def test_unknown_backbone_names_suggest_close_ones():
    with pytest.raises(ModelError, match="resnet50"):
        build_model(ModelConfig(name="torchvision/resnet5O", pretrained=False), 2)


def test_timm_backbone_builds_with_its_own_preprocessing():
    pytest.importorskip("timm")
    model, pre = build_model(ModelConfig(name="timm/resnet18", pretrained=False), 3)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 3)
    assert pre.image_size == 224 and len(pre.mean) == 3


def test_model_folder_round_trip(tmp_path):
    cfg = ModelConfig(name="torchvision/resnet18", pretrained=False, head="mlp", head_hidden=16)
    model, pre = build_model(cfg, 3)
    save_model_folder(model, tmp_path / "model", cfg, ["a", "b", "猫"], pre.with_size(32))
    loaded, meta = load_model_folder(tmp_path / "model")
    assert meta["class_names"] == ["a", "b", "猫"] and meta["preprocessing"]["image_size"] == 32
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert not (tmp_path / "model.tmp").exists()


def test_timm_is_imported_without_wandb_and_a_later_import_of_wandb_works():
    """In a fresh interpreter: this process may have imported wandb already."""
    code = (
        "import sys; from trainer.model.weights import import_timm; timm = import_timm(); "
        "assert 'wandb' not in sys.modules, 'timm imported wandb'; "
        "assert timm.is_model('test_resnet'); import wandb; print(wandb.__name__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "wandb", proc.stderr[-2000:]
