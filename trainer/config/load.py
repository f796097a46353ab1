"""How does a config come to be? Defaults < recipe or YAML file < `key.sub=value` overrides,
coerced to the dataclasses' types, with the top-level optim filled into every phase.

Every mistake (unknown key, wrong type, bad value) raises `ConfigError` naming the dotted key,
before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.config.ranges import COUNT, RANGES
from trainer.config.schema import ConfigError, RunConfig

RECIPES_DIR = Path(__file__).parent / "recipes"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting strings from the command line."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value is False and "no" in choices:  # YAML 1.1 reads a bare `no` as false
            value = "no"
        if value not in choices:
            raise ConfigError(
                f"{key}: expected one of {', '.join(map(str, choices))}; got {value!r}"
            )
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    return _coerce_scalar(value, tp, key)


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    """The first member of `A | B | None` that takes `value`; null only where None is a member."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _coerce(value, arg, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(
        errors[-1] if len(errors) == 1 else f"{key}: {value!r} fits none of {type_name(tp)}"
    )


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    """bool, int, float or str, from YAML's own value or the command line's text."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # PyYAML reads "1e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, bool) or value is None:  # a word YAML took for something else
            raise ConfigError(
                f"{key}: expected a string, got {value!r}: YAML reads on, off, yes, no, true and "
                f"false as booleans, ~ and null as nothing; quote the text, e.g. {key}='\"off\"'"
            )
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise AssertionError(f"unsupported config annotation {tp!r} at {key}")


def type_name(tp: Any) -> str:
    """An annotation as a user reads it: `int | null`, `auto|pil`, `list[float]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "|".join(map(str, typing.get_args(tp)))
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            hint = difflib.get_close_matches(str(k), names, n=1)
            more = f" (did you mean '{prefix + '.' if prefix else ''}{hint[0]}'?)" if hint else ""
            raise ConfigError(
                f"unknown config key '{key}'{more}; `trainer config --keys` lists them"
            )
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}.{e}" if prefix else str(e)) from None


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set `a.b.0.c=value` in a nested dict/list tree; list items are addressed by index."""
    parts = dotted.split(".")
    node: Any = tree
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: '{'.'.join(parts[:i])}' has {len(node)} entries")
            part = int(part)
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]


def _default_tree() -> dict:
    return dataclasses.asdict(RunConfig())


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _phases(tree: dict) -> list[dict]:
    train = tree.get("train")
    phases = train.get("phases") if isinstance(train, dict) else None
    if phases is None:
        return []
    if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
        raise ConfigError(f"train.phases: expected a list of mappings, got {phases!r}")
    for n, p in enumerate(phases):
        if not isinstance(p.get("optim") or {}, dict):
            raise ConfigError(f"train.phases.{n}.optim: expected a mapping, got {p['optim']!r}")
    return phases


def _set_epochs(tree: dict, epochs: Any) -> None:
    """train.epochs: the epochs of a single-phase run; kept in the phase, not twice."""
    if epochs is None or not isinstance(tree.get("train"), dict):
        return  # null: not set; a train that is not a mapping is reported by _build
    epochs = _coerce(epochs, int, "train.epochs")
    if epochs not in RANGES["TrainConfig.epochs"]:
        raise ConfigError(f"train.epochs: expected {COUNT.describe(True)}, got {epochs}")
    phases = _phases(tree)
    if not phases:
        phases = tree["train"]["phases"] = [{"name": "train"}]
    if len(phases) > 1:
        raise ConfigError(
            f"train.epochs: this config has {len(phases)} phases; set each one's epochs "
            "with train.phases.N.epochs=... instead"
        )
    phases[0]["epochs"] = epochs
    tree["train"]["epochs"] = None


def _one_phase_if_empty(tree: dict, epochs: Any) -> None:
    """`train.phases=[]` (e.g. to make a two-phase recipe one phase): one default phase, of
    train.epochs whether that was given before or after it (it used to fall back to 10)."""
    train = tree.get("train")
    if isinstance(train, dict) and train.get("phases") == []:
        train["phases"] = [{"name": "train"}]
        _set_epochs(tree, epochs)


def _fill_phases(tree: dict) -> None:
    """Give every phase the top-level optim keys it does not set itself; one phase if none."""
    train = tree.setdefault("train", {})
    if not isinstance(train, dict):
        return  # _build reports the type error
    if not _phases(tree):
        train["phases"] = [{"name": "train"}]
    root_optim = tree.get("optim") or {}
    if not isinstance(root_optim, dict):
        raise ConfigError(f"optim: expected a mapping, got {root_optim!r}")
    train["phases"] = [
        {**p, "optim": {**root_optim, **(p.get("optim") or {})}} for p in _phases(tree)
    ]
    if train.get("epochs") is not None:
        _set_epochs(tree, train["epochs"])


def _apply_override(tree: dict, key: str, value: Any) -> None:
    """Overrides come last and win: `optim.X` sets X in every phase, `train.epochs` the one phase."""
    if key == "optim" and isinstance(value, dict):
        for sub, v in value.items():
            _apply_override(tree, f"optim.{sub}", v)
        return
    if key == "train.epochs":
        _set_epochs(tree, value)
        return
    _set_dotted(tree, key, value)
    if key.startswith("optim."):
        for n in range(len(_phases(tree))):
            _set_dotted(tree, f"train.phases.{n}.{key}", value)


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value` -> (key.sub, YAML-parsed value); `key=` gives an empty string."""
    key, sep, raw = text.partition("=")
    if not sep and ("/" in text or Path(text).expanduser().is_dir()):
        raise ConfigError(
            f"{text!r} is not a key=value override; for the image folder write data.root={text}"
        )
    if not sep or not key or any(c.isspace() for c in key):
        raise ConfigError(f"bad override {text!r}: expected key.sub=value (e.g. train.epochs=3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def find_recipe(name_or_path: str) -> Path:
    """A YAML path, or the name of a packaged recipe (`trainer recipes` lists them)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if packaged.is_file():
        return packaged
    if path.is_dir():
        raise ConfigError(
            f"--config {name_or_path}: is a folder; give a YAML file or a recipe name "
            f"(trainer recipes)"
        )
    raise ConfigError(
        f"--config {name_or_path!r}: no such file, and no packaged recipe of that name "
        f"(recipes: {', '.join(list_recipes())})"
    )


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; --config takes a YAML file") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return tree


def load_config(config: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults < recipe/YAML file < overrides, validated into a RunConfig."""
    tree = _default_tree()
    tree["train"]["phases"] = []  # phases come from the file, or one is made from train.epochs
    if config:
        tree = _deep_merge(tree, load_yaml(find_recipe(config)))
    train = tree.get("train")
    epochs = train.get("epochs") if isinstance(train, dict) else None  # the latest given
    _fill_phases(tree)
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(tree, key, value)
        epochs = value if key == "train.epochs" else epochs
        _one_phase_if_empty(tree, epochs)
    _fill_phases(tree)  # phases given whole on the command line get the top-level optim too
    return _build(RunConfig, tree, "")
