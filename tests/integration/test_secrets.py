"""A W&B key given in the environment or on the command line appears in no file of the run
(config, provenance, metrics, checkpoints, W&B's offline files and logs) and in no output."""

import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import assert_ok, make_folder, train_smoke

pytestmark = pytest.mark.integration


def _files_holding(folder: Path, needles: list[bytes]) -> list[str]:
    return [
        f"{path} holds {needle.decode()}"
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.is_symlink()
        for needle in needles
        if needle in path.read_bytes()
    ]


def test_wandb_keys_from_env_and_command_line_are_written_nowhere(tmp_path):
    env_key = f"fake-env-key-{uuid.uuid4().hex}"
    cli_key = f"fake-cli-key-{uuid.uuid4().hex}"
    root = make_folder(tmp_path / "images", ["a", "b"], 8)
    run = tmp_path / "run"
    wandb_home = tmp_path / "wandb-home"  # W&B's config/cache folders, checked as well
    env = {
        "WANDB_API_KEY": env_key,
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": str(wandb_home / "config"),
        "WANDB_CACHE_DIR": str(wandb_home / "cache"),
        "WANDB_DATA_DIR": str(wandb_home / "data"),
    }
    proc = train_smoke(
        root,
        run,
        "train.epochs=2",
        "train.log_every=1",
        "tracking.wandb.mode=offline",
        f"tracking.wandb.api_key={cli_key}",
        env=env,
    )
    assert_ok(proc)

    # The run folder is complete, so "nothing found" means something.
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    for pattern in ("*.wandb", "logs/debug.log", "logs/debug-internal.log", "files/output.log"):
        assert list(offline[0].glob(pattern)), pattern
    # W&B records the command line (the "environment" record of the .wandb file; older
    # versions: files/wandb-metadata.json): it got the scrubbed one.
    (records,) = offline[0].glob("*.wandb")
    assert b"tracking.wandb.api_key=***" in records.read_bytes()
    assert list((run / "checkpoints").glob("step-*/*"))
    env_json = (run / "env.json").read_text(encoding="utf-8")
    assert "tracking.wandb.api_key=***" in env_json
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["tracking"]["wandb"]["api_key"] is None

    needles = [env_key.encode(), cli_key.encode()]
    assert _files_holding(run, needles) == []
    assert _files_holding(wandb_home, needles) == []
    for key in (env_key, cli_key):
        assert key not in proc.stdout and key not in proc.stderr
