"""Parameter pytrees as flat ``{"a/b/c": array}`` dicts and back.

Paths join the pytree keys with "/": dict keys, sequence indices and attribute names, so a
Flax NNX ``State`` of a model reads ``"blocks/0/mixer/cell/B"`` (the ``.value`` attribute
of an ``nnx.Param`` is dropped) and a nested dict ``{"Dense_0": {"kernel": w}}`` reads
``"Dense_0/kernel"``.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey


def _key_name(key) -> str:
    if isinstance(key, DictKey):
        return str(key.key)
    if isinstance(key, SequenceKey):
        return str(key.idx)
    if isinstance(key, GetAttrKey):
        return key.name
    if isinstance(key, FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_string(path) -> str:
    """``(DictKey('blocks'), SequenceKey(0), ..., GetAttrKey('value'))`` → ``"blocks/0/..."``."""
    names = [_key_name(k) for k in path]
    if names and isinstance(path[-1], GetAttrKey) and names[-1] == "value":
        names = names[:-1]  # nnx.Variable's payload attribute
    return "/".join(names)


def flatten(tree: Any) -> tuple[dict[str, Any], Any]:
    """``tree`` → (``{path: leaf}`` in tree order, treedef)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat: dict[str, Any] = {}
    for path, leaf in leaves:
        name = path_string(path)
        if name in flat:
            raise ValueError(f"two parameters share the path {name!r}; cannot address them by path.")
        flat[name] = leaf
    return flat, treedef


def unflatten(treedef, flat: dict[str, Any]) -> Any:
    """Inverse of :func:`flatten` (``flat`` in the order :func:`flatten` returned)."""
    return jax.tree_util.tree_unflatten(treedef, list(flat.values()))
