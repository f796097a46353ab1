import subprocess
import sys

import pytest
import yaml

from trainer.config import ConfigError, RunConfig, dump_yaml, load_config


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {batch_size: 8, seed: 3}\ndata: {image_size: 64}\n")
    cfg = load_config(str(path), ["train.batch_size=4", "optim.lr=1e-3"])
    assert cfg.train.batch_size == 4  # override beats file
    assert cfg.train.seed == 3  # file beats default
    assert cfg.data.image_size == 64
    assert cfg.train.grad_accum_steps == 1  # default
    assert cfg.optim.lr == pytest.approx(1e-3)  # "1e-3" is a YAML string: coerced to float


def test_packaged_recipe_by_name():
    cfg = load_config("resnext101-sgd")
    phase = cfg.train.phases[0]
    assert cfg.model.name == "torchvision/resnext101_32x8d"
    assert (phase.epochs, phase.optim.optimizer, phase.optim.lr, phase.optim.head_lr_mult) == (
        30,
        "sgd",
        5e-5,
        10,
    )
    assert (phase.optim.momentum, phase.optim.weight_decay, phase.optim.scheduler) == (
        0.9,
        1e-3,
        "step",
    )
    assert (phase.optim.step_epochs, phase.optim.gamma) == (30, 0.1)
    assert cfg.data.split == [0.7, 0.2, 0.1]
    assert phase.optim.no_decay_norm_bias is False  # the reference decays every parameter


def test_two_phase_recipe_phases_inherit_top_level_optim():
    cfg = load_config("resnet50-two-phase", ["train.phases.1.optim.lr=2e-5"])
    head, finetune = cfg.train.phases
    assert (head.freeze, head.epochs, head.optim.optimizer, head.optim.lr) == (
        "backbone",
        5,
        "adam",
        1e-4,
    )
    assert (finetune.freeze, finetune.epochs, finetune.optim.optimizer, finetune.optim.lr) == (
        "none",
        2,
        "adam",
        2e-5,
    )
    assert (cfg.model.head, cfg.model.head_hidden) == ("mlp", 128)
    assert cfg.train.freeze_bn is False  # as the reference: BatchNorm stays in train mode


def test_reference_recipes_train_without_augmentation_as_their_scripts_do():
    for recipe in ("resnext101-sgd", "resnet50-two-phase"):
        cfg = load_config(recipe)
        assert cfg.data.augment is False, recipe
        assert not any(cfg.augments(p) for p in cfg.train.phases), recipe


def test_a_phase_augments_as_it_says_else_as_data_augment_says():
    cfg = load_config("transfer")
    probe, finetune = cfg.train.phases
    assert (probe.freeze, probe.augment, cfg.augments(probe)) == ("backbone", False, False)
    assert (finetune.freeze, finetune.augment, cfg.augments(finetune)) == ("none", None, True)
    assert cfg.train.freeze_bn is True and cfg.model.head == "linear"  # features can be cached
    off = load_config("transfer", ["data.augment=false"])
    assert not any(off.augments(p) for p in off.train.phases)
    on = load_config("transfer", ["train.phases.0.augment=true"])
    assert all(on.augments(p) for p in on.train.phases)


def test_train_epochs_sets_the_single_phase_and_is_refused_for_several():
    assert load_config(None, ["train.epochs=3"]).train.phases[0].epochs == 3
    with pytest.raises(ConfigError, match=r"train\.epochs.*2 phases"):
        load_config("resnet50-two-phase", ["train.epochs=3"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.rooot=/x", "data.rooot"),
        ("train.batch_size=big", "train.batch_size"),
        ("train.batch_size=0", "train.batch_size"),
        ("model.head=conv", "model.head"),
        ("data.split=[0.5,0.2]", "data.split"),
        ("optim.lr=-1", "optim.lr"),
        ("model.name=resnet50", "model.name"),
        ("train.phases.3.epochs=1", "train.phases.3"),
        ("nonsense", "nonsense"),
    ],
)
def test_bad_keys_and_values_name_the_dotted_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match="did you mean 'data.root'"):
        load_config(None, ["data.rooot=/x"])


def test_pretrained_accepts_bool_or_path():
    assert load_config(None, ["model.pretrained=false"]).model.pretrained is False
    assert load_config(None, ["model.pretrained=true"]).model.pretrained is True
    assert load_config(None, ["model.pretrained=w/r50.pth"]).model.pretrained == "w/r50.pth"


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config("resnet50-two-phase", ["data.root=数据/角度正", "train.seed=7"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    assert load_config(str(path)) == cfg
    assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)


def test_default_config_is_valid():
    assert isinstance(load_config(), RunConfig)


def test_cli_config_error_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", f"data.root={tmp_path}", "train.batch_size=abc"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "train.batch_size" in proc.stderr and "abc" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_data_root_exits_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "train",
            f"data.root={tmp_path / 'nope'}",
            f"output_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_overrides_win_over_a_reloaded_run_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(load_config("digits")), encoding="utf-8")
    cfg = load_config(str(path), ["train.phases.0.epochs=5", "optim.lr=0.5"])
    assert cfg.train.phases[0].epochs == 5
    assert cfg.train.phases[0].optim.lr == 0.5
    assert load_config(str(path), ["train.epochs=3"]).train.phases[0].epochs == 3


def test_top_level_optim_override_reaches_every_phase_unless_a_phase_key_follows():
    cfg = load_config("resnet50-two-phase", ["optim.lr=3e-4"])
    assert [p.optim.lr for p in cfg.train.phases] == [3e-4, 3e-4]
    cfg = load_config("resnet50-two-phase", ["optim.lr=3e-4", "train.phases.1.optim.lr=1e-6"])
    assert [p.optim.lr for p in cfg.train.phases] == [3e-4, 1e-6]


def test_phases_given_whole_on_the_command_line_get_the_top_level_optim():
    cfg = load_config(
        None,
        [
            "optim.lr=0.01",
            "train.phases=[{name: a, epochs: 1}, {name: b, epochs: 2, optim: {lr: 0.1}}]",
        ],
    )
    assert [(p.name, p.epochs, p.optim.lr) for p in cfg.train.phases] == [
        ("a", 1, 0.01),
        ("b", 2, 0.1),
    ]


def test_optim_given_as_a_mapping_reaches_the_phases_too():
    assert load_config(None, ["optim={lr: 0.5}"]).train.phases[0].optim.lr == 0.5


def test_train_epochs_null_means_unset_and_bad_values_name_train_epochs():
    assert load_config(None, ["train.epochs=null"]).train.phases[0].epochs == 10
    assert load_config(None, ["train.phases=[]", "train.epochs=3"]).train.phases[0].epochs == 3
    with pytest.raises(ConfigError, match=r"^train\.epochs: expected an integer"):
        load_config(None, ["train.epochs=abc"])


@pytest.mark.parametrize(
    "overrides",
    [["train.epochs=1", "train.phases=[]"], ["train.phases=[]", "train.epochs=1"]],
)
def test_empty_phases_mean_one_phase_of_train_epochs_in_either_order(overrides):
    phases = load_config("cpu-smoke", overrides).train.phases
    assert [(p.name, p.epochs) for p in phases] == [("train", 1)]


def test_empty_phases_keep_the_recipes_train_epochs_and_make_a_two_phase_recipe_one_phase():
    assert [p.epochs for p in load_config("cpu-smoke", ["train.phases=[]"]).train.phases] == [2]
    cfg = load_config("resnet50-two-phase", ["train.phases=[]", "train.epochs=3"])
    assert [(p.name, p.epochs) for p in cfg.train.phases] == [("train", 3)]


@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_output_dir_is_a_config_error_with_an_example(empty):
    with pytest.raises(ConfigError, match=r"^output_dir: empty; .*output_dir=runs/photos"):
        load_config(None, [f"output_dir={empty}"])


def test_config_naming_a_folder_says_it_is_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(
        ConfigError, match=r"^--config data: is a folder; give a YAML file or a recipe"
    ):
        load_config("data")
    # A recipe's name still means the recipe, also beside a folder of that name.
    (tmp_path / "cpu-smoke").mkdir()
    assert load_config("cpu-smoke").model.name == "torchvision/resnet18"


def test_a_phase_optim_that_is_not_a_mapping_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train\.phases\.0\.optim"):
        load_config(None, ["train.phases.0.optim=3"])


def test_mixed_precision_no_given_bare_is_the_choice_no_not_false(tmp_path):
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("train: {mixed_precision: no}\n")  # YAML 1.1: a bare no is false
    assert load_config(str(path)).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(None, ["train.mixed_precision=yes"])


def test_a_word_yaml_reads_as_a_boolean_for_a_text_key_says_how_to_quote_it():
    with pytest.raises(ConfigError, match=r"data.root: expected a string, got False: .*quote"):
        load_config(None, ["data.root=off"])
    assert load_config(None, ['data.root="off"']).data.root == "off"
