"""Secrets become "***" in anything written: argv, provenance, config dumps."""

import sys

import yaml

from trainer import runtime, secrets
from trainer.config import dump_yaml, flat_dict, load_config, to_dict

KEY = "fake-key-0123456789abcdef"


def test_secret_names():
    for name in ("WANDB_API_KEY", "tracking.wandb.api_key", "--hf-token", "DB_PASSWORD", "token"):
        assert secrets.is_secret_name(name), name
    for name in ("data.root", "output_dir", "train.log_every", "TOKENIZERS_PARALLELISM"):
        assert not secrets.is_secret_name(name), name


def test_environment_values_are_found(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdefgh")
    monkeypatch.setenv("SHORT_TOKEN", "1")  # too short to be a secret worth redacting
    values = secrets.secret_values()
    assert KEY in values and "tok-abcdefgh" in values and "1" not in values
    assert secrets.redact({"a": [f"x{KEY}y", ("tok-abcdefgh",)], "n": 3}) == {
        "a": ["x***y", ("***",)],
        "n": 3,
    }


def test_scrub_argv_masks_secret_overrides_in_place(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    argv = ["trainer", "train", f"tracking.wandb.api_key={KEY}x", f"data.root=/d/{KEY}"]
    monkeypatch.setattr(sys, "argv", argv)
    secrets.scrub_argv()
    assert sys.argv is argv  # the same list: whoever holds it sees the scrubbed one
    assert argv == ["trainer", "train", "tracking.wandb.api_key=***", "data.root=/d/***"]


def test_provenance_records_the_scrubbed_command(monkeypatch):
    import torch

    monkeypatch.setattr(sys, "argv", ["trainer", "train", f"tracking.wandb.api_key={KEY}"])
    env = runtime.provenance(1, torch.device("cpu"))
    assert env["command"] == ["trainer", "train", "tracking.wandb.api_key=***"]
    assert KEY not in str(env)


def test_config_dumps_leave_the_api_key_out():
    cfg = load_config("cpu-smoke", [f"tracking.wandb.api_key={KEY}"])
    assert cfg.tracking.wandb.api_key == KEY  # the run itself has it
    text = dump_yaml(cfg)
    assert KEY not in text and yaml.safe_load(text)["tracking"]["wandb"]["api_key"] is None
    assert flat_dict(to_dict(cfg))["tracking.wandb.api_key"] is None
