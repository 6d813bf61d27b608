"""Typed, strict training configs: YAML → dataclasses, ``--set a.b=c`` overrides.

Unknown keys and values of the wrong type are :class:`ConfigError` naming the key (and the
closest valid one), raised before anything is built. ``load_config("tiny")`` reads
``configs/tiny.yaml`` from the repository (or the installed package data); a path to a
``.yaml`` file works too.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any, Literal

import yaml

__all__ = ["Config", "ModelConfig", "DataConfig", "OptimConfig", "TrainConfig", "MeshConfig",
           "ConfigError", "load_config", "apply_overrides", "config_to_dict", "available_configs"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the key."""


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
    mode: Literal["parallel", "sequential", "auto"] = "parallel"
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


@dataclasses.dataclass
class MeshConfig:
    data: int = -1  # -1: all devices not used by the other axes
    fsdp: int = 1
    devices: int = -1  # use only the first N devices (-1: all; single-process only)


@dataclasses.dataclass
class Config:
    name: str = "unnamed"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


# ---- conversion ----------------------------------------------------------------------------


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}.")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}.")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}.{hint}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            if isinstance(value, str):  # a single path is a list of one
                value = [value]
            else:
                raise ConfigError(f"{key}: expected a list, got {value!r}.")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key or 'config'}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}.")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}.")
    raise AssertionError(f"unsupported config type {tp}")


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), sorted(fields), n=1)
            hint = f" Did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}.{hint} Valid keys here: {', '.join(sorted(fields))}.")
        kwargs[name] = _convert(value, hints[name], key)
    return cls(**kwargs)


def build_config(cls: type, values: dict, prefix: str = ""):
    """Build the dataclass ``cls`` (nested dataclasses allowed) from a plain dict, strictly:
    unknown keys (with the closest valid one suggested) and wrong types raise ConfigError
    naming the key. Shared by the training config and the experiment configs."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}.")
    return _build(cls, values, prefix)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _config_dirs() -> list[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(os.path.dirname(os.path.dirname(here)), "configs"),  # source checkout
            os.path.join(os.path.dirname(here), "configs")]  # installed package data


def available_configs() -> list[str]:
    names = set()
    for d in _config_dirs():
        if os.path.isdir(d):
            names |= {f[:-5] for f in os.listdir(d) if f.endswith(".yaml")}
    return sorted(names)


def _resolve_path(name_or_path: str) -> str:
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        if not os.path.isfile(name_or_path):
            raise ConfigError(f"config file {name_or_path!r} does not exist.")
        return name_or_path
    for d in _config_dirs():
        path = os.path.join(d, name_or_path + ".yaml")
        if os.path.isfile(path):
            return path
    names = available_configs()
    close = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"no config named {name_or_path!r}.{hint} Available: {', '.join(names)}.")


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Load ``configs/NAME.yaml`` (or a YAML path), apply ``key.sub=value`` overrides."""
    path = _resolve_path(name_or_path)
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path!r} must contain a mapping, got {type(raw).__name__}.")
    raw.setdefault("name", os.path.splitext(os.path.basename(path))[0])
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
    return _build(Config, data)
