"""Language-model training: configs, data, sharded train loop, checkpoints, metrics."""

from .config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
