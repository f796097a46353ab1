"""The run configuration: a typed dataclass tree, YAML files and packaged recipes, dotted overrides.

Precedence: dataclass defaults < recipe or YAML file < `key.sub=value` overrides. Every mistake
(unknown key, wrong type, bad value) raises `ConfigError` naming the dotted key, before any work.

This is the config API the other packages import; behind it:
  schema.py    the dataclass tree: every key's type, default and meaning; ConfigError
  ranges.py    where each number may lie
  load.py      defaults < recipe/YAML < overrides, coerced and checked; the packaged recipes
  describe.py  the config written out (dict, YAML, flat keys, the key table), secrets left out
Nothing here imports torch: `trainer config` and `trainer recipes` answer at once.
"""

from trainer.config.describe import describe_keys, dump_yaml, flat_dict, to_dict
from trainer.config.load import RECIPES_DIR, list_recipes, load_config
from trainer.config.ranges import RANGES, number_kind
from trainer.config.schema import (
    CheckpointConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PhaseConfig,
    RunConfig,
    TrackingConfig,
    TrainConfig,
    WandbConfig,
)

__all__ = [
    "RANGES",
    "RECIPES_DIR",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "PhaseConfig",
    "RunConfig",
    "TrackingConfig",
    "TrainConfig",
    "WandbConfig",
    "describe_keys",
    "dump_yaml",
    "flat_dict",
    "list_recipes",
    "load_config",
    "number_kind",
    "to_dict",
]
