"""Typed, strict training configs: YAML → dataclasses, ``--set a.b=c`` overrides, value rules.

Unknown keys and values of the wrong type are :class:`ConfigError` naming the key (and the
closest valid one); values out of range or breaking a divisibility rule are ConfigErrors
naming the key, the value and the rule (:data:`VALUE_RULES`). All raised before anything is
built. ``load_config("tiny")`` reads ``tiny.yaml`` from the package data
(``pararnn/configs/``, via :mod:`importlib.resources`, so installed wheels have them); a
path to a ``.yaml`` file works too.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import os
from typing import Literal

import yaml

# The generic strict builder lives below all packages; re-exported here (public names kept).
from ..config import ConfigError, _build, build_config, check_values
from .rules import VALUE_RULES

__all__ = ["Config", "ModelConfig", "DataConfig", "OptimConfig", "TrainConfig", "MeshConfig",
           "ConfigError", "load_config", "apply_overrides", "config_to_dict", "available_configs",
           "build_config", "validate_config", "VALUE_RULES"]


@dataclasses.dataclass
class ModelConfig:
    # The sequence mixer of every block (issue 18): "recurrent" (the cell below), "attention"
    # (causal multi-head attention with RoPE) or "mamba2" (SSD selective state-space model).
    mixer: Literal["recurrent", "attention", "mamba2"] = "recurrent"
    cell: Literal["paragru", "paralstm", "gru", "lstm", "mingru"] = "paragru"  # mingru: linear baseline
    d_model: int = 128
    n_layers: int = 2
    vocab_size: int = 256
    mlp_hidden: int | None = None  # SwiGLU hidden size; default ⌈8/3·d_model⌉ rounded to 64
    num_heads: int = 2  # heads of the cell's block-diagonal input projection
    conv_kernel: int = 4  # depthwise causal conv before the cell
    max_recurrent_norm: float | None = 0.5
    mode: Literal["parallel", "sequential", "auto"] = "auto"  # auto: pararnn.auto.choose_layer_paths
    solver_method: Literal["newton", "quasi"] | None = None  # None: the cell's default
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # computation
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: bool = False  # rematerialise each block in the backward pass
    init_std: float = 0.02  # embeddings and linear layers
    # attention and mamba2 mixers (issue 18); the recurrent mixer ignores these
    head_dim: int = 64  # channels per head: attention heads = d_model/head_dim, mamba2 heads = ssm_expand·d_model/head_dim
    rope_base: float = 10000.0  # attention: rotary position embedding base
    ssm_state: int = 128  # mamba2: state size N per head (B and C have this size)
    ssm_expand: int = 2  # mamba2: inner width = ssm_expand · d_model
    ssm_chunk: int = 64  # mamba2: chunk length of the chunked (SSD) parallel form
    ssm_algorithm: Literal["chunked", "scan"] = "chunked"  # mamba2 parallel form: SSD chunks, or
    #                                                       pararnn.linear_recurrence over every state entry


@dataclasses.dataclass
class DataConfig:
    # synthetic: a built-in generated corpus (no files, no network) · files: local text /
    # JSON lines / parquet · hub: a Hugging Face dataset name · parity / mqar / khop: synthetic
    # tasks (khop: k-hop induction heads, issue 18)
    source: Literal["synthetic", "files", "hub", "parity", "mqar", "khop"] = "synthetic"
    paths: list[str] = dataclasses.field(default_factory=list)
    format: Literal["auto", "text", "json", "parquet"] = "auto"
    text_field: str = "text"
    hub_name: str | None = None
    hub_config: str | None = None
    hub_split: str = "train"
    streaming: bool = False
    tokenizer: str = "byte"  # "byte" or a path to a Hugging Face tokenizer.json
    seq_len: int = 128
    batch_size: int = 16  # global batch, in sequences
    eval_fraction: float = 0.05  # held-out share of the packed sequences
    eval_batches: int = 4
    num_examples: int = 2000  # synthetic / parity / mqar / khop: examples generated
    task_length: int = 64  # parity / mqar / khop: input length
    mqar_pairs: int = 8  # mqar: key-value pairs per example
    khop_hops: int = 2  # khop: hops k (issue 18)
    khop_alphabet: int = 8  # khop: number of distinct characters (vocabulary = alphabet + 2)
    seed: int = 0
    order_seed: int | None = None  # seed of the training batches' order (None: data.seed); spawned
    #                                runs differ only in it


@dataclasses.dataclass
class OptimConfig:
    lr: float = 3e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr·min_lr_ratio at the last step
    weight_decay: float = 1e-4
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    z_loss: float = 1e-4
    grad_accum: int = 1


@dataclasses.dataclass
class TrainConfig:
    steps: int = 300
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    seed: int = 0
    progress: bool = True  # tqdm bar (degrades to log lines when not a terminal)
    stop_after: int | None = None  # stop cleanly (with a checkpoint) after this step; the
    #                                schedule still spans train.steps (time-boxed jobs)
    spawn_from: str | None = None  # start from another run's checkpoint (its workdir); see train/spawn.py
    spawn_step: int | None = None  # the checkpoint step to spawn from (None: its latest)
    resume: bool = True  # continue the workdir's run; false: move its checkpoints and metrics
    #                      aside (to DIR/previous/<time>/, never deleted) and start afresh


@dataclasses.dataclass
class MeshConfig:
    data: int = -1  # -1: all devices not used by the other axes
    fsdp: int = 1
    seq: int = 1  # sequence parallelism: split every sequence's time axis over this many devices
    devices: int = -1  # use only the first N devices (-1: all; single-process only)


@dataclasses.dataclass
class Config:
    name: str = "unnamed"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _packaged_configs() -> dict[str, "importlib.resources.abc.Traversable"]:
    """The configs shipped in the package (``pararnn/configs/*.yaml``), by name."""
    root = importlib.resources.files("pararnn") / "configs"
    if not root.is_dir():
        return {}
    return {entry.name[:-5]: entry for entry in root.iterdir() if entry.name.endswith(".yaml")}


def available_configs() -> list[str]:
    """Names of the packaged configs (``tiny``, ``parity``, …, ``gru7b``)."""
    return sorted(_packaged_configs())


def _read_config_text(name_or_path: str) -> tuple[str, str]:
    """``(text, source)`` of a config name (packaged) or a ``.yaml`` path (a path wins when
    it has a separator or a YAML suffix)."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path or "/" in name_or_path:
        if os.path.isdir(name_or_path):
            raise ConfigError(f"--config {name_or_path!r} is a directory; expected a config name or a .yaml file.")
        if not os.path.isfile(name_or_path):
            raise ConfigError(f"config file {name_or_path!r} does not exist.")
        with open(name_or_path, encoding="utf-8") as f:
            return f.read(), name_or_path
    packaged = _packaged_configs()
    if name_or_path in packaged:
        return packaged[name_or_path].read_text(encoding="utf-8"), f"{name_or_path}.yaml (packaged)"
    names = sorted(packaged)
    close = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"no config named {name_or_path!r}.{hint} Available: {', '.join(names) or '(none)'}; "
                      f"or pass a path to a .yaml file.")


def validate_config(cfg: Config) -> Config:
    """Check every value rule of :data:`VALUE_RULES` (ranges, divisibility); ConfigError
    naming the key, the value and the rule. Returns ``cfg``."""
    check_values(cfg, VALUE_RULES)
    return cfg


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Load a packaged config by name (``tiny``) or a YAML path, apply ``key.sub=value``
    overrides, check the values."""
    text, source = _read_config_text(name_or_path)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {source!r} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {source!r} must contain a mapping, got {type(raw).__name__}.")
    raw.setdefault("name", os.path.splitext(os.path.basename(name_or_path))[0])
    cfg = _build(Config, raw)
    return apply_overrides(cfg, overrides or [])


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``a.b=value`` strings (values parsed as YAML: ``3``, ``1e-3``, ``true``, ``[a, b]``)."""
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (e.g. optim.lr=1e-3), got {item!r}.")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node, parts = data, key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                prefix = ".".join(parts[:depth])
                valid = sorted(k for k, v in node.items() if isinstance(v, dict))
                close = difflib.get_close_matches(part, valid, n=1, cutoff=0.5)
                hint = f" Did you mean {((prefix + '.') if prefix else '') + close[0]!r}?" if close else ""
                raise ConfigError(f"unknown config section {'.'.join(parts[:depth + 1])!r} in --set {item!r}.{hint}")
            node = node[part]
        if parts[-1] not in node:
            prefix = ".".join(parts[:-1])
            close = difflib.get_close_matches(parts[-1], sorted(node), n=1)
            hint = f" Did you mean {((prefix + '.') if prefix else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r} in --set {item!r}.{hint}")
        node[parts[-1]] = value
    return validate_config(_build(Config, data))
