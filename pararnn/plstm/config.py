"""Typed, strict config of the arrow-pointing experiment (``configs/experiments/plstm_arrow.yaml``).

Unknown keys and values of the wrong type raise :class:`PLSTMConfigError` naming the key (and
the closest valid one). ``key=value`` overrides use dotted keys (``train.steps=50``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import yaml

from ..config import ConfigError, build_config

__all__ = ["ArrowConfig", "ArrowData", "ArrowModel", "ArrowOptim", "ArrowTrain",
           "PLSTMConfigError", "load_arrow_config"]


# A config file or override is invalid; the message names the key (the project's ConfigError).
PLSTMConfigError = ConfigError


@dataclasses.dataclass
class ArrowData:
    train_size: int = 16  # image side at training
    eval_sizes: list[int] = dataclasses.field(default_factory=lambda: [16, 32])  # test sides
    num_train: int = 4000
    num_eval: int = 1000
    seed: int = 0  # train scenes; eval scenes use seed + 1


@dataclasses.dataclass
class ArrowModel:
    patch: int = 2
    d_model: int = 32
    depth: int = 2  # pLSTM2D blocks, alternating P and D mode
    num_heads: int = 4
    orientations: int = 4


@dataclasses.dataclass
class ArrowOptim:
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    clip_norm: float = 1.0


@dataclasses.dataclass
class ArrowTrain:
    steps: int = 300
    batch_size: int = 64
    log_every: int = 25
    seed: int = 0


@dataclasses.dataclass
class ArrowConfig:
    name: str = "plstm_arrow"
    data: ArrowData = dataclasses.field(default_factory=ArrowData)
    model: ArrowModel = dataclasses.field(default_factory=ArrowModel)
    optim: ArrowOptim = dataclasses.field(default_factory=ArrowOptim)
    train: ArrowTrain = dataclasses.field(default_factory=ArrowTrain)


def _set(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise PLSTMConfigError(f"{dotted}: {p} is not a section.")
    tree[leaf] = value


def load_arrow_config(path: str, overrides: list[str] = ()) -> ArrowConfig:
    """Read a YAML file, apply ``key=value`` overrides (values parsed as YAML), validate."""
    if not os.path.exists(path):
        raise PLSTMConfigError(f"config: file {path!r} not found.")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    for item in overrides:
        if "=" not in item:
            raise PLSTMConfigError(f"override {item!r}: expected key=value.")
        key, value = item.split("=", 1)
        _set(raw, key.strip(), yaml.safe_load(value))
    return build_config(ArrowConfig, raw)
