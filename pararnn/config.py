"""Strict configs for every package: plain dicts (from YAML) → typed dataclasses, plus value rules.

:func:`build_config` builds a dataclass (nested dataclasses allowed) and raises
:class:`ConfigError` naming the key — with the closest valid key suggested — for unknown keys
and values of the wrong type. :func:`check_values` applies a declarative table of value
rules (``{"model.d_model": [at_least(1)], "model.num_heads": [divides("model.d_model")]}``)
and reports every broken rule with the key, the value seen and the rule. The training config
(:mod:`pararnn.train.config`) and the experiment configs (pLSTM, Align, sparse) use both;
this module sits below all packages so none of them depends on the trainer.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

__all__ = ["ConfigError", "build_config", "check_values", "get_key", "Rule", "at_least", "greater_than",
           "between", "divides", "divisible_by", "at_most"]


class ConfigError(ValueError):
    """A config file, override or value is invalid; the message names the key."""


# ---- types → values ------------------------------------------------------------------------


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


# ---- value rules ----------------------------------------------------------------------------

Lookup = Callable[[str], Any]


@dataclasses.dataclass(frozen=True)
class Rule:
    """One value rule for one key.

    ``ok(value, lookup) -> bool`` decides; ``text(lookup) -> str`` states the rule for the
    message (``lookup(key)`` reads another key of the same config, e.g. for divisibility);
    ``when(lookup) -> bool`` limits the rule to the configs it applies to. ``None`` values
    (an optional key left unset) pass every rule.
    """

    ok: Callable[[Any, Lookup], bool]
    text: Callable[[Lookup], str]
    when: Callable[[Lookup], bool] | None = None
    note: str = ""  # why the rule exists, appended in parentheses

    def but(self, *, when: Callable[[Lookup], bool] | None = None, note: str = "") -> "Rule":
        """The same rule, restricted by ``when`` and/or explained by ``note``."""
        return dataclasses.replace(self, when=when or self.when, note=note or self.note)


def _fmt(x) -> str:
    return repr(x) if isinstance(x, str) else f"{x:g}" if isinstance(x, float) else str(x)


def at_least(lo, *, also: Sequence = ()) -> Rule:
    """``value >= lo`` (or one of the special values ``also``, e.g. -1 for "all")."""
    extra = "".join(f" or {_fmt(a)}" for a in also)
    return Rule(lambda v, _: v in also or v >= lo, lambda _: f"must be >= {_fmt(lo)}{extra}")


def greater_than(lo) -> Rule:
    return Rule(lambda v, _: v > lo, lambda _: f"must be > {_fmt(lo)}")


def between(lo, hi, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """``lo <= value <= hi``, each end optionally open."""
    def ok(v, _):
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    interval = f"{'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    return Rule(ok, lambda _: f"must be in {interval}")


def divides(key: str) -> Rule:
    """The value divides the integer at ``key`` (e.g. heads divide the width)."""
    return Rule(lambda v, get: v != 0 and get(key) % v == 0, lambda get: f"must divide {key}={_fmt(get(key))}")


def divisible_by(key: str) -> Rule:
    """The value is a multiple of the integer at ``key``."""
    return Rule(lambda v, get: get(key) != 0 and v % get(key) == 0,
                lambda get: f"must be a multiple of {key}={_fmt(get(key))}")


def at_most(bound: Callable[[Lookup], Any], label: str) -> Rule:
    """``value <= bound(lookup)``, a bound computed from other keys; ``label`` writes the bound
    as a formula for the message (e.g. ``"data.task_length // 2 - 1"``)."""
    return Rule(lambda v, get: v <= bound(get), lambda get: f"must be <= {label} = {_fmt(bound(get))}")


def get_key(cfg: Any, key: str) -> Any:
    """``cfg``'s value at a dotted ``key`` (attributes of dataclasses, or mapping items)."""
    node = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, Mapping) else getattr(node, part)
    return node


def check_values(cfg: Any, rules: Mapping[str, Sequence[Rule]]) -> None:
    """Apply ``rules`` (dotted key → rules) to ``cfg``; raise one :class:`ConfigError` listing
    every broken rule as ``key=value: rule (why).``. Rules whose key's value is None, or whose
    ``when`` is false, are skipped; the first broken rule of a key is reported."""
    lookup = lambda key: get_key(cfg, key)  # noqa: E731
    problems = []
    for key, key_rules in rules.items():
        value = lookup(key)
        if value is None:
            continue
        for rule in key_rules:
            if rule.when is not None and not rule.when(lookup):
                continue
            if not rule.ok(value, lookup):
                why = f" ({rule.note})" if rule.note else ""
                problems.append(f"{key}={_fmt(value)}: {rule.text(lookup)}{why}.")
                break
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError("invalid config values:\n  " + "\n  ".join(problems))
