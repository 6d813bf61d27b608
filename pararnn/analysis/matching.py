"""Aligning two networks by permuting hidden units: weight matching (Git Re-Basin's
coordinate descent) and activation matching, each step a linear assignment problem
solved by :func:`scipy.optimize.linear_sum_assignment`."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import jax
import jax.numpy as jnp
from scipy.optimize import linear_sum_assignment

from .interpolation import _check_same_structure
from .paths import flatten, unflatten
from .spec import PermutationSpec, as_spec, merge_views, permute_array, split_views, validate


def _to_numpy(flat: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(jax.device_get(v), dtype=np.float64) for k, v in flat.items()}


def _assign(cost: np.ndarray, groups: int) -> np.ndarray:
    """The permutation maximising Σ_i cost[i, perm[i]], block-diagonal over ``groups``."""
    n = cost.shape[0]
    size = n // groups
    perm = np.empty(n, dtype=np.int64)
    for g in range(groups):
        sl = slice(g * size, (g + 1) * size)
        _, cols = linear_sum_assignment(cost[sl, sl], maximize=True)
        perm[sl] = cols + g * size
    return perm


def permute(params: Any, spec: PermutationSpec | Mapping, perms: Mapping[str, Any]) -> Any:
    """``params`` with every axis named ``p`` in ``spec`` permuted by ``perms[p]``
    (``new[.., i, ..] = old[.., perms[p][i], ..]``); the same pytree type and dtypes back.
    For a spec that lists all of a network's symmetries this computes the same function."""
    spec = as_spec(spec)
    flat, treedef = flatten(params)
    pieces = split_views(_to_numpy(flat), spec, "params")
    sizes = validate(spec, pieces, "params")
    perms = {k: np.asarray(v, dtype=np.int64) for k, v in perms.items()}
    for name, size in sizes.items():
        if name not in perms:
            raise ValueError(f"perms has no permutation {name!r} (the spec uses {sorted(sizes)}).")
        if perms[name].shape != (size,) or not np.array_equal(np.sort(perms[name]), np.arange(size)):
            raise ValueError(f"perms[{name!r}] must be a permutation of range({size}), got {perms[name]}.")
        g = spec.groups.get(name, 1)
        if np.any(perms[name] // (size // g) != np.arange(size) // (size // g)):
            raise ValueError(f"perms[{name!r}] moves units between its {g} groups (spec.groups[{name!r}] = {g}: "
                             f"e.g. channels of different heads); it must be block-diagonal.")
    permuted = {k: permute_array(v, spec.axes[k], perms) for k, v in pieces.items()}
    merged = merge_views(permuted, _to_numpy(flat), spec)
    return unflatten(treedef, {k: jnp.asarray(merged[k], dtype=jnp.asarray(v).dtype) for k, v in flat.items()})


def weight_matching(params_a: Any, params_b: Any, spec: PermutationSpec | Mapping, *, max_iter: int = 100,
                    key: jax.Array | None = None, return_permutations: bool = False, verbose: bool = False):
    """Permute ``params_b``'s hidden units to align with ``params_a`` (Git Re-Basin).

    Maximises Σ_paths ⟨W_a, π(W_b)⟩ over the permutations named in ``spec`` by coordinate
    descent: each permutation in turn (order shuffled by ``key``; sorted if None) is the
    solution of a linear assignment problem on Σ over the axes it acts on of W_a W_bᵀ
    (with the other permutations held fixed), until a full pass improves nothing or
    ``max_iter`` passes.

    Args:
      params_a, params_b: parameter pytrees of the same structure (dicts, ``nnx.State``...).
      spec: {path: per-axis permutation name or None} or a :class:`PermutationSpec`; every
        parameter must be listed.
      max_iter: maximum number of passes over all permutations.
      key: PRNG key for the order of the permutations in each pass.
      return_permutations: also return ``{name: perm}`` (int arrays).

    Returns:
      ``params_b`` permuted (same pytree type and dtypes), or ``(params, perms)``.
    """
    spec = as_spec(spec)
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}.")
    _check_same_structure(params_a, params_b)
    flat_a, _ = flatten(params_a)
    flat_b, _ = flatten(params_b)
    wa = split_views(_to_numpy(flat_a), spec, "params_a")
    wb = split_views(_to_numpy(flat_b), spec, "params_b")
    sizes = validate(spec, wa, "params_a")
    validate(spec, wb, "params_b")
    uses: dict[str, list[tuple[str, int]]] = {n: [] for n in sizes}
    for path, axes in spec.axes.items():
        for axis, name in enumerate(axes):
            if name is not None:
                uses[name].append((path, axis))
    names = sorted(sizes)
    perms = {n: np.arange(s) for n, s in sizes.items()}
    # the order of the permutations in each pass: sorted, or shuffled by a seed drawn from key
    rng = None if key is None else np.random.default_rng(int(jax.random.randint(key, (), 0, 2 ** 31 - 1)))

    for it in range(max_iter):
        improved = False
        order = names if rng is None else [names[i] for i in rng.permutation(len(names))]
        for name in order:
            n = sizes[name]
            cost = np.zeros((n, n))
            for path, axis in uses[name]:
                a = np.moveaxis(wa[path], axis, 0).reshape(n, -1)
                b = permute_array(wb[path], spec.axes[path], perms, skip_axis=axis)
                b = np.moveaxis(b, axis, 0).reshape(n, -1)
                cost += a @ b.T
            new = _assign(cost, spec.groups.get(name, 1))
            old_value, new_value = cost[np.arange(n), perms[name]].sum(), cost[np.arange(n), new].sum()
            # strict improvement beyond rounding, so ties cannot make it cycle
            if new_value > old_value + 1e-12 * max(1.0, abs(old_value)):
                perms[name], improved = new, True
        if verbose:
            print(f"weight_matching: pass {it + 1}, improved={improved}")
        if not improved:
            break
    out = permute(params_b, spec, perms)
    return (out, perms) if return_permutations else out


def activation_matching(features_fn: Callable[[Any, Any], Mapping[str, Any]], params_a: Any, params_b: Any, x: Any,
                        spec: PermutationSpec | Mapping, perm_features: Mapping[str, str], *,
                        return_permutations: bool = False):
    """Permute ``params_b`` so that its hidden units' activations correlate best with
    ``params_a``'s on the inputs ``x`` (Git Re-Basin's activation matching).

    Args:
      features_fn: ``features_fn(params, x) -> {name: activations (..., units)}``.
      spec: as in :func:`weight_matching`; applies the permutations to the parameters.
      perm_features: {permutation name: feature name whose last axis are that
        permutation's units}. Every permutation of the spec must be listed.

    Each permutation is the linear assignment maximising the summed Pearson correlation
    between unit i of θ_a and unit perm[i] of θ_b over all samples (leading axes
    flattened); constant units correlate 0 with everything.
    """
    spec = as_spec(spec)
    flat_a, _ = flatten(params_a)
    sizes = validate(spec, split_views(_to_numpy(flat_a), spec, "params_a"), "params_a")
    missing = sorted(set(sizes) - set(perm_features))
    if missing:
        raise ValueError(f"perm_features has no feature for permutation(s) {missing}.")
    feats_a, feats_b = features_fn(params_a, x), features_fn(params_b, x)
    perms = {}
    for name, feature in perm_features.items():
        if name not in sizes:
            raise ValueError(f"perm_features names permutation {name!r}, which the spec does not use ({sorted(sizes)}).")
        if feature not in feats_a:
            raise ValueError(f"perm_features[{name!r}] = {feature!r} is not among the features {sorted(feats_a)}.")
        za = np.asarray(feats_a[feature], np.float64)
        zb = np.asarray(feats_b[feature], np.float64)
        if za.shape[-1] != sizes[name] or za.shape != zb.shape:
            raise ValueError(f"feature {feature!r} has shape {za.shape} (θ_b: {zb.shape}); its last axis must be "
                             f"permutation {name!r}'s size {sizes[name]}.")
        za, zb = za.reshape(-1, sizes[name]), zb.reshape(-1, sizes[name])
        za, zb = za - za.mean(0), zb - zb.mean(0)
        sa, sb = np.linalg.norm(za, axis=0), np.linalg.norm(zb, axis=0)
        corr = (za.T @ zb) / np.where(sa > 0, sa, np.inf)[:, None] / np.where(sb > 0, sb, np.inf)[None, :]
        perms[name] = _assign(corr, spec.groups.get(name, 1))
    out = permute(params_b, spec, perms)
    return (out, perms) if return_permutations else out
