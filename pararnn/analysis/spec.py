"""Permutation specs: which axes of which parameters a hidden-unit permutation acts on.

A spec maps "/"-joined parameter paths (see :mod:`pararnn.analysis.paths`) to one entry per
axis — a permutation name or None::

    {"Dense_0/kernel": (None, "P0"), "Dense_0/bias": ("P0",), "Dense_1/kernel": ("P0", None)}

Permuting every axis named "P0" with the same permutation leaves the network's function
unchanged. Two extensions, for pararnn's recurrent layers, live in :class:`PermutationSpec`:

- ``groups``: a permutation that must stay block-diagonal over G contiguous blocks (hidden
  channels of a multi-head cell can only move within their head);
- ``views``: a parameter matched through a different layout, e.g. ParaGRU's head-blocked
  input kernel ``(heads, in/heads, 3·H/heads)`` as a block-diagonal ``(in, 3, H)`` array,
  or a fused kernel split into pieces ``"path:x"``, ``"path:z"`` with different permutations.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Callable, Mapping

import numpy as np

Axes = tuple  # tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class View:
    """How matching sees one parameter.

    ``split(array) -> {suffix: array}``: the pieces (suffix "" keeps the path itself, any
    other suffix is addressed as ``"path:suffix"`` in the spec); ``merge(pieces, like)``
    puts (permuted) pieces back into an array shaped like ``like``.
    """

    split: Callable[[np.ndarray], dict[str, np.ndarray]]
    merge: Callable[[dict[str, np.ndarray], np.ndarray], np.ndarray]
    description: str = ""


@dataclasses.dataclass(frozen=True)
class PermutationSpec:
    """``axes``: {path or "path:piece": per-axis permutation names or None};
    ``groups``: {permutation name: number of contiguous blocks it must keep};
    ``views``: {path: :class:`View`}."""

    axes: Mapping[str, Axes]
    groups: Mapping[str, int] = dataclasses.field(default_factory=dict)
    views: Mapping[str, View] = dataclasses.field(default_factory=dict)

    def __or__(self, other: "PermutationSpec | Mapping") -> "PermutationSpec":
        """Union of two specs (e.g. a recurrent layer's and its readout's)."""
        other = as_spec(other)
        for name in set(self.groups) & set(other.groups):
            if self.groups[name] != other.groups[name]:
                raise ValueError(f"permutation {name!r} has groups={self.groups[name]} in one spec and "
                                 f"{other.groups[name]} in the other.")
        clash = (set(self.axes) & set(other.axes)) | (set(self.views) & set(other.views))
        if clash:
            raise ValueError(f"both specs describe {sorted(clash)}.")
        return PermutationSpec({**self.axes, **other.axes}, {**self.groups, **other.groups},
                               {**self.views, **other.views})

    def prefixed(self, prefix: str) -> "PermutationSpec":
        """The same spec for parameters under ``prefix/`` (permutation names unchanged)."""
        p = prefix.rstrip("/") + "/" if prefix else ""
        return PermutationSpec({p + k: v for k, v in self.axes.items()}, dict(self.groups),
                               {p + k: v for k, v in self.views.items()})

    def renamed(self, mapping: Mapping[str, str | None]) -> "PermutationSpec":
        """Rename permutations (``{"H": "block0/H"}``); mapping a name to None drops it (the
        axis is then not permuted)."""
        ren = lambda n: mapping.get(n, n) if n is not None else None  # noqa: E731
        groups = {ren(k): v for k, v in self.groups.items() if ren(k) is not None}
        return PermutationSpec({k: tuple(ren(n) for n in v) for k, v in self.axes.items()}, groups, dict(self.views))


def as_spec(spec: "PermutationSpec | Mapping[str, Axes]") -> PermutationSpec:
    if isinstance(spec, PermutationSpec):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"spec must be a mapping of parameter paths to axis tuples or a PermutationSpec, "
                        f"got {type(spec).__name__}.")
    return PermutationSpec(dict(spec))


def split_views(flat: dict[str, np.ndarray], spec: PermutationSpec, which: str) -> dict[str, np.ndarray]:
    """Parameters → the arrays the spec addresses (views applied)."""
    for path in spec.views:
        if path not in flat:
            raise ValueError(_unknown(path, flat, which, "a view"))
    out: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        if path in spec.views:
            for suffix, piece in spec.views[path].split(value).items():
                out[f"{path}:{suffix}" if suffix else path] = piece
        else:
            out[path] = value
    return out


def merge_views(pieces: dict[str, np.ndarray], flat_like: dict[str, np.ndarray],
                spec: PermutationSpec) -> dict[str, np.ndarray]:
    """Inverse of :func:`split_views`."""
    out = {}
    for path, like in flat_like.items():
        if path in spec.views:
            view = spec.views[path]
            keys = view.split(like).keys()
            out[path] = view.merge({s: pieces[f"{path}:{s}" if s else path] for s in keys}, like)
        else:
            out[path] = pieces[path]
    return out


def _unknown(path: str, flat, which: str, what: str = "the spec") -> str:
    close = difflib.get_close_matches(path, list(flat), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted(flat)[:12]) + (" …" if len(flat) > 12 else "")
    return f"{what} names parameter {path!r}, which {which} does not have.{hint} Known paths: {known}"


def validate(spec: PermutationSpec, arrays: dict[str, np.ndarray], which: str = "params_a") -> dict[str, int]:
    """Check ``spec`` against the (viewed) ``arrays``; return {permutation: size}.

    Raises ValueError naming the path for: a path the parameters do not have, a parameter
    the spec does not cover, a tuple whose length is not the array's rank, a permutation
    used with two different sizes, and groups that do not divide a permutation's size.
    """
    for path in spec.axes:
        if path not in arrays:
            raise ValueError(_unknown(path, arrays, which))
    missing = [p for p in arrays if p not in spec.axes]
    if missing:
        raise ValueError(f"the spec does not cover parameter(s) {missing}; map each to a tuple of "
                         f"permutation names or None per axis (all None: not permuted).")
    sizes: dict[str, tuple[int, str, int]] = {}
    for path, axes in spec.axes.items():
        shape = np.shape(arrays[path])
        if not isinstance(axes, tuple) or not all(a is None or isinstance(a, str) for a in axes):
            raise ValueError(f"spec[{path!r}] must be a tuple of permutation names or None, got {axes!r}.")
        if len(axes) != len(shape):
            raise ValueError(f"spec[{path!r}] = {axes} names {len(axes)} axes, but the parameter has shape "
                             f"{shape} ({len(shape)} axes).")
        for axis, name in enumerate(axes):
            if name is None:
                continue
            if name in sizes and sizes[name][0] != shape[axis]:
                first_size, first_path, first_axis = sizes[name]
                raise ValueError(f"permutation {name!r}: axis {axis} of {path!r} (shape {shape}) has size "
                                 f"{shape[axis]}, but axis {first_axis} of {first_path!r} has size {first_size}.")
            sizes.setdefault(name, (shape[axis], path, axis))
    for name, g in spec.groups.items():
        if name not in sizes:
            raise ValueError(f"spec.groups names permutation {name!r}, which no parameter uses.")
        if not isinstance(g, int) or g < 1 or sizes[name][0] % g:
            raise ValueError(f"spec.groups[{name!r}] = {g!r} must be a positive divisor of the permutation's "
                             f"size {sizes[name][0]} (first used by {sizes[name][1]!r}).")
    return {name: s[0] for name, s in sizes.items()}


def permute_array(x: np.ndarray, axes: Axes, perms: Mapping[str, np.ndarray],
                  skip_axis: int | None = None) -> np.ndarray:
    """Apply ``perms`` along the named axes of ``x`` (``x'[.., i, ..] = x[.., perm[i], ..]``)."""
    for axis, name in enumerate(axes):
        if name is not None and axis != skip_axis:
            x = np.take(x, perms[name], axis=axis)
    return x
