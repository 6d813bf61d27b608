"""Typed configs of the Align experiments (``configs/experiments/align_*.yaml``); unknown keys and
wrong types are errors naming the key (the builder of :mod:`pararnn.config`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

import yaml

from ..config import ConfigError, build_config  # the project's strict dataclass builder

__all__ = ["AlignExperimentConfig", "load_align_config", "ConfigError"]


@dataclasses.dataclass
class AlignExperimentConfig:
    name: str = "align"
    task: Literal["images", "add"] = "images"
    model: Literal["mlp", "conv", "rnn"] = "mlp"
    widths: list[int] = dataclasses.field(default_factory=lambda: [8, 32, 128, 512])
    rules: list[str] = dataclasses.field(
        default_factory=lambda: ["backprop", "align_zero", "align_ada", "fa", "dfa", "readout"])
    depth: int = 2  # hidden layers of the MLP (conv: conv layers)
    activation: Literal["relu", "tanh"] = "relu"
    parameterization: Literal["ntk", "standard"] = "ntk"
    recurrence: Literal["dense", "diagonal"] = "dense"  # rnn only
    rnn_mode: Literal["parallel", "sequential"] = "sequential"  # rnn only
    gain: float = 1.0  # rnn recurrent gain
    steps: int = 300
    batch_size: int = 128
    lr: float = 0.5  # plain SGD (optax.sgd); NTK scaling keeps it width-independent
    loss: Literal["half_sum", "mean"] = "half_sum"  # mse_loss convention ("mean": the reference code's)
    n_train: int = 2000
    n_test: int = 500
    seq_len: int = 100  # add task
    align_every: int = 50  # measure the rule/backprop cosine every this many steps
    seed: int = 0


def load_align_config(name_or_path: str, overrides: dict | None = None) -> AlignExperimentConfig:
    """``configs/experiments/NAME.yaml`` (or a path) → :class:`AlignExperimentConfig`; ``overrides`` is a
    dict of top-level keys applied on top."""
    path = name_or_path
    if not name_or_path.endswith((".yaml", ".yml")):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.path.join(root, "configs", "experiments", name_or_path + ".yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"align config {name_or_path!r}: no file {path!r}.")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path!r} must contain a mapping, got {type(raw).__name__}.")
    raw.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    raw.update(overrides or {})
    cfg = build_config(AlignExperimentConfig, raw)
    from .rules import RULES
    bad = [r for r in cfg.rules if r not in RULES]
    if bad:
        raise ConfigError(f"rules: unknown rule(s) {bad}; expected some of {list(RULES)}.")
    if cfg.steps % cfg.align_every:
        raise ConfigError(f"steps: must be a multiple of align_every={cfg.align_every}, "
                          f"got {cfg.steps}.")
    if cfg.task == "add" and cfg.model != "rnn":
        raise ConfigError(f"model: the add task needs model 'rnn', got {cfg.model!r}.")
    return cfg
