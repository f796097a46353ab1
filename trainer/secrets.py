"""Secrets (API keys, tokens, passwords) never reach a file or a tracker: they become "***".

They come from three places: the environment (WANDB_API_KEY, HF_TOKEN, any *_API_KEY/_TOKEN/
_SECRET/_PASSWORD), the command line (`tracking.wandb.api_key=...`) and the config
(`register()`ed by whoever reads it). Whatever records the command later (env.json, W&B's
wandb-metadata.json) reads `sys.argv`, so `scrub_argv()` rewrites it in place, early.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
NAMED_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
SECRET_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET", "_PASSWORD")
SECRET_NAMES = ("API_KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD")
# Shorter values of merely secret-looking variables are left alone: redacting "1" or "true"
# everywhere would mangle every file and protect nothing.
MIN_LENGTH = 8

_registered: set[str] = set()


def register(value: str | None) -> None:
    """Treat `value` (e.g. the config's api_key) as a secret from now on in this process."""
    if value:
        _registered.add(value)


def is_secret_name(name: str) -> bool:
    """WANDB_API_KEY, tracking.wandb.api_key, --hf-token...: the last dotted part is what counts."""
    last = name.rsplit(".", 1)[-1].strip("-_").replace("-", "_").upper()
    return last in SECRET_NAMES or last.endswith(SECRET_SUFFIXES)


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every known secret value, longest first (so a key containing another goes whole)."""
    environ = os.environ if environ is None else environ
    found = set(_registered)
    for name, value in environ.items():
        if name in NAMED_ENV and value:
            found.add(value)
        elif is_secret_name(name) and len(value) >= MIN_LENGTH:
            found.add(value)
    found.update(_argv_secrets(sys.argv))
    return sorted(found, key=len, reverse=True)


def redact(obj: Any, values: list[str] | None = None) -> Any:
    """`obj` with every secret replaced by "***": strings, and the strings inside dicts, lists,
    tuples (keys too). Other objects come back as they are."""
    values = secret_values() if values is None else values
    if isinstance(obj, str):
        for value in values:
            obj = obj.replace(value, REDACTED)
        return obj
    if isinstance(obj, Mapping):
        return {redact(k, values): redact(v, values) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, values) for v in obj)
    return obj


def scrub_argv(argv: list[str] | None = None) -> None:
    """Rewrite `sys.argv` (or `argv`) in place: `KEY=value` with a secret-looking KEY becomes
    `KEY=***`, and known secret values anywhere become "***".

    In place, because W&B and provenance read `sys.argv` when they record the command. Other
    processes still see the original command line (`ps`): WANDB_API_KEY in the environment is the
    better way to pass a key.
    """
    argv = sys.argv if argv is None else argv
    values = secret_values()
    argv[:] = [redact(_mask_assignment(arg), values) for arg in argv]


def _mask_assignment(arg: str) -> str:
    key, sep, value = arg.partition("=")
    return f"{key}={REDACTED}" if sep and value and is_secret_name(key) else arg


def _argv_secrets(argv: list[str]) -> set[str]:
    """Values of `KEY=value` arguments whose KEY looks secret (tracking.wandb.api_key=...)."""
    found = set()
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and value and value != REDACTED and is_secret_name(key):
            found.add(value)
    return found
