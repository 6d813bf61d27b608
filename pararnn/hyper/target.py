"""A target NNX module seen as a flat parameter vector: what static hypernetworks generate.

:class:`TargetSpec` records, from a template instance of any Flax NNX module, the graph
definition and the structure, shapes and dtypes of its ``nnx.Param`` leaves. A flat vector of
``num_params`` numbers then becomes a parameter ``nnx.State`` with exactly the template's tree
structure and shapes (:meth:`TargetSpec.unflatten`), and :meth:`TargetSpec.apply` runs the
module functionally with it (``nnx.merge``), so gradients flow into whatever produced it.

Generation order (the order of the flat vector, which decides what the chunks of
:class:`pararnn.hyper.RNNHyperNetwork` hold) is the module's *definition* order: attributes
in the order they were assigned in ``__init__``, list items by index — so a classifier
defined as ``self.rnn = …; self.out = …`` gets its recurrent layer generated before its
readout (``nnx.State`` itself sorts attribute names). Leaves the walk cannot place (exotic
containers) follow, in ``nnx.State`` order. :attr:`TargetSpec.generation_paths` lists it.

Non-parameter state of the template (RNG streams, batch statistics) is kept as it was in the
template and not updated by :meth:`apply`: targets are meant to be deterministic functions
of their parameters.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class TargetSpec:
    """The parameter layout of a target module.

    Args:
      module: a template instance; only its structure, shapes and dtypes (and its
        non-parameter state) are kept, its parameter values are returned by :meth:`initial`.

    Attributes:
      num_params: P, the total number of parameters.
      paths: the leaves' paths, e.g. ``"['rnn']['a']"``, in flattening order.
      shapes, dtypes: per leaf.
    """

    def __init__(self, module: nnx.Module):
        if not isinstance(module, nnx.Module):
            raise TypeError(f"TargetSpec: module must be a flax.nnx.Module, got {type(module).__name__}.")
        self.graphdef, params, self.rest = nnx.split(module, nnx.Param, ...)
        with_paths, self.treedef = jax.tree_util.tree_flatten_with_path(params)
        if not with_paths:
            raise ValueError(f"TargetSpec: {type(module).__name__} has no nnx.Param leaves to generate.")
        self.paths = tuple(_path_str(p) for p, _ in with_paths)
        self.shapes = tuple(tuple(l.shape) for _, l in with_paths)
        self.dtypes = tuple(jnp.dtype(l.dtype) for _, l in with_paths)
        self.sizes = tuple(math.prod(s) for s in self.shapes)
        # leaf indices (flattening order) in generation order; offsets follow it
        found = [self.paths.index(p) for p in _definition_order(module) if p in self.paths]
        self.order = tuple(dict.fromkeys(found + list(range(len(self.paths)))))
        self.generation_paths = tuple(self.paths[i] for i in self.order)
        offsets, start = [0] * len(self.paths), 0
        for i in self.order:
            offsets[i], start = start, start + self.sizes[i]
        self.offsets = tuple(offsets)
        self.num_params = int(sum(self.sizes))
        self.module_name = type(module).__name__
        self._initial = self.flatten(params)

    # Equal layouts compare equal, so that jitted functions over hypernetworks of the same
    # target type share one compilation (a hypernetwork holds its spec as a static field).
    # The non-parameter state is baked into those compilations: compare it by value.
    def _key(self):
        return (self.graphdef, self.treedef, self.shapes, self.dtypes)

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other) -> bool:
        if not isinstance(other, TargetSpec) or self._key() != other._key():
            return False
        mine, theirs = jax.tree.leaves(self.rest), jax.tree.leaves(other.rest)
        return len(mine) == len(theirs) and all(
            a.shape == b.shape and a.dtype == b.dtype and np.array_equal(_host(a), _host(b))
            for a, b in zip(mine, theirs))

    def initial(self, dtype: Any = None) -> jax.Array:
        """The template's own parameters (its init: a good θ₀ for MIP) as a flat
        ``(num_params,)`` vector of ``dtype`` (default: the widest leaf dtype)."""
        return self._initial if dtype is None else self._initial.astype(dtype)

    # ---- flat vector <-> parameter state ------------------------------------------------------
    def unflatten(self, flat: jax.Array) -> nnx.State:
        """``flat (num_params,)`` → a parameter ``nnx.State`` with the template's structure,
        shapes and dtypes (cast from ``flat``'s dtype)."""
        flat = jnp.asarray(flat)
        if flat.shape != (self.num_params,):
            raise ValueError(
                f"TargetSpec({self.module_name}): expected a flat parameter vector of shape "
                f"({self.num_params},) for {len(self.paths)} leaves, got shape {flat.shape}.")
        leaves = [flat[o:o + n].reshape(s).astype(d)
                  for o, n, s, d in zip(self.offsets, self.sizes, self.shapes, self.dtypes)]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)

    def flatten(self, params: Any, dtype: Any = None) -> jax.Array:
        """A parameter state (or ``nnx.state(module, nnx.Param)`` of a same-shaped module) →
        ``(num_params,)`` of ``dtype`` (default: the widest leaf dtype, at least float32).
        Raises ValueError naming the first mismatching leaf."""
        leaves = self.check(params)
        if dtype is None:
            dtype = np.result_type(np.float32, *[np.dtype(l.dtype) for l in leaves])
        return jnp.concatenate([jnp.ravel(leaves[i]).astype(dtype) for i in self.order])

    def check(self, params: Any) -> list[jax.Array]:
        """The leaves of ``params`` after checking its structure and shapes against the
        template; ValueError naming the path, the shape seen and the one expected."""
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
        paths = tuple(_path_str(p) for p, _ in with_paths)
        if treedef != self.treedef:
            missing = sorted(set(self.paths) - set(paths))
            extra = sorted(set(paths) - set(self.paths))
            raise ValueError(
                f"TargetSpec({self.module_name}): parameter tree does not match the target: "
                f"missing {missing or 'nothing'}, unexpected {extra or 'nothing'} "
                f"(expected leaves {list(self.paths)}).")
        for path, (_, leaf), shape in zip(paths, with_paths, self.shapes):
            if tuple(jnp.shape(leaf)) != shape:
                raise ValueError(
                    f"TargetSpec({self.module_name}): parameter {path} has shape "
                    f"{tuple(jnp.shape(leaf))}, the target expects {shape}.")
        return [l for _, l in with_paths]

    # ---- running the target -----------------------------------------------------------------
    def merge(self, params: nnx.State) -> nnx.Module:
        """A module instance carrying ``params`` (checked), for functional use inside jit/grad."""
        self.check(params)
        return nnx.merge(self.graphdef, params, self.rest)

    def apply(self, params: nnx.State, *args: Any, **kwargs: Any) -> Any:
        """Run the target with ``params``: ``module(*args, **kwargs)``."""
        return self.merge(params)(*args, **kwargs)


def _host(a):
    """A comparable host copy (PRNG key arrays through their key data)."""
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    return np.asarray(a)


def _definition_order(obj, prefix: str = "") -> list[str]:
    """Parameter paths (``_path_str`` format) of a module in definition order: attributes in
    assignment order (``vars`` keeps it), list/tuple items by index, dict items in order."""
    if isinstance(obj, nnx.Param):
        return [prefix]
    if isinstance(obj, (list, tuple)):
        items = list(enumerate(obj))
    elif isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, nnx.Module):
        items = [(int(k) if k.isdigit() else k, v) for k, v in vars(obj).items()
                 if not k.startswith("_")]
    else:
        return []
    out = []
    for key, value in items:
        out += _definition_order(value, prefix + (f"[{key}]" if isinstance(key, int) else f"[{key!r}]"))
    return out


def _path_str(path) -> str:
    """``(DictKey('rnn'), DictKey('a'), GetAttrKey('value'))`` → ``"['rnn']['a']"``."""
    keys = [k for k in path if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value")]
    return jax.tree_util.keystr(tuple(keys))


__all__ = ["TargetSpec"]
