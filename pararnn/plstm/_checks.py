"""Shape/dtype validation shared by the pLSTM kernels: errors name the argument, the shape
seen and the shape expected, raised at trace time."""

from __future__ import annotations

import jax.numpy as jnp


def check_kernel_args(name: str, lead: tuple[int, ...] | None, q, k, v, gates: dict,
                      gate_shapes: dict) -> tuple:
    """Validates q, k (*lead, H, dk), v (*lead, H, dv) and each gate's shape (given with the
    head count filled in). Returns (lead, H, dk, dv, dtype)."""
    arrays = {"q": q, "k": k, "v": v, **gates}
    for key, a in arrays.items():
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{name}: {key} must be an array, got {type(a).__name__}.")
    dtype = jnp.result_type(q)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name}: q must be floating point, got dtype {dtype}.")
    for key, a in arrays.items():
        if jnp.result_type(a) != dtype:
            raise TypeError(f"{name}: all inputs must share q's dtype {dtype}; {key} has "
                            f"{jnp.result_type(a)}.")
    nlead = q.ndim - 2 if lead is None else len(lead)
    if q.ndim != nlead + 2:
        raise ValueError(f"{name}: q must have shape (*{lead}, H, dk), got {q.shape}.")
    lead = tuple(q.shape[:nlead]) if lead is None else lead
    H, dk = q.shape[-2:]
    if tuple(q.shape) != (*lead, H, dk):
        raise ValueError(f"{name}: q must have shape {(*lead, 'H', 'dk')}, got {q.shape}.")
    if tuple(k.shape) != tuple(q.shape):
        raise ValueError(f"{name}: k must have q's shape {q.shape}, got {k.shape}.")
    if v.ndim != nlead + 2 or tuple(v.shape[:-1]) != (*lead, H):
        raise ValueError(f"{name}: v must have shape {(*lead, H, 'dv')}, got {v.shape}.")
    dv = v.shape[-1]
    for key, shape in gate_shapes.items():
        shape = tuple(H if s == "H" else s for s in shape)
        if tuple(gates[key].shape) != shape:
            raise ValueError(f"{name}: {key} must have shape {shape}, got {gates[key].shape}.")
    return lead, H, dk, dv, dtype


def einsum(spec: str, *operands):
    """``jnp.einsum`` at full float32 precision: on GPU/TPU the default may use TF32/bf16
    passes (~1e-3 relative error), which would break the kernels' exactness."""
    return jnp.einsum(spec, *operands, precision="highest")
