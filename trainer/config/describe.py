"""How is a config written out and shown? As plain data, YAML, flat tracker keys, and the table
of keys of `trainer config --keys`; secrets never leave in any of them.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import typing
from typing import Any

import yaml

from trainer.config import schema
from trainer.config.load import type_name
from trainer.config.schema import RunConfig

# Config fields that hold secrets: written as null wherever a config goes (config.yaml, checkpoints,
# the tracker). Null rather than "***" so that a reloaded config falls back to the environment
# instead of using "***" as a key.
SECRET_FIELDS = ("api_key",)


def to_dict(cfg: Any) -> dict:
    """The config as plain data, secrets left out: safe to write or send anywhere."""
    return _without_secrets(dataclasses.asdict(cfg))


def _without_secrets(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: None if k in SECRET_FIELDS else _without_secrets(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_without_secrets(v) for v in tree]
    return tree


def dump_yaml(cfg: RunConfig) -> str:
    """config.yaml's text: the resolved config, secrets left out (to_dict)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def flat_dict(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{'data.root': ..., 'train.phases.0.epochs': ...}: for trackers that want flat keys."""
    out: dict[str, Any] = {}
    items = cfg.items() if isinstance(cfg, dict) else enumerate(cfg)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)) and v:
            out.update(flat_dict(v, key + "."))
        else:
            out[key] = v
    return out


@functools.cache
def _field_docs() -> dict[tuple[str, str], str]:
    """Docstrings written under each dataclass field, read from schema.py's source."""
    docs = {}
    tree = ast.parse(inspect.getsource(schema))
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for a, b in zip(body, body[1:]):
                if (
                    isinstance(a, ast.AnnAssign)
                    and isinstance(a.target, ast.Name)
                    and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant)
                    and isinstance(b.value.value, str)
                ):
                    docs[(node.name, a.target.id)] = " ".join(b.value.value.split())
    return docs


def describe_keys(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, doc) for every leaf field, for `trainer config --keys`."""
    rows = []
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        doc = _field_docs().get((cls.__name__, f.name), "")
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_keys(tp, key + "."))
        elif typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            rows.append((key, "list", "[]", doc))
            rows.extend(describe_keys(typing.get_args(tp)[0], key + ".N."))
        else:
            rows.append((key, type_name(tp), repr(getattr(default, f.name)), doc))
    return rows
