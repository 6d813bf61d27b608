"""Shared pieces of the benchmark scripts: timing, environment description, output tables,
and the three benchmark cells (one per Jacobian structure)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from typing import Any, Callable

import numpy as np
import jax
import jax.numpy as jnp


def time_fn(fn: Callable, *args, repeats: int = 5, min_seconds: float = 0.0) -> dict:
    """Compile (first call, timed separately), then the median of ``repeats`` timed calls."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    times = []
    while len(times) < repeats or sum(times) < min_seconds:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times),
            "compile_s": compile_s}


def time_interleaved(fns: dict, args: dict, repeats: int = 5) -> dict:
    """Median seconds per call of each ``fns[name](*args[name])``: all compiled first, then
    the timed calls interleaved round-robin, so a machine whose load changes during the run
    slows every variant alike (sequential timing lets one variant catch a quiet minute)."""
    for name, fn in fns.items():
        jax.block_until_ready(fn(*args[name]))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args[name]))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def environment() -> dict:
    dev = jax.devices()[0]
    return {
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """``columns``: (key, header). Floats are formatted compactly."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
        return "" if v is None else str(v)
    lines = ["| " + " | ".join(h for _, h in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |")
    return "\n".join(lines)


def write_json(path: str, payload: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


# ---- benchmark cells: pure steps over pre-projected inputs --------------------------------


def gru_diag_step(h, u, a):
    """ParaGRU recurrence, diagonal Jacobian. h (D,), u (3, D), a (3, D)."""
    z = jax.nn.sigmoid(a[0] * h + u[0])
    r = jax.nn.sigmoid(a[1] * h + u[1])
    cand = jnp.tanh(a[2] * (r * h) + u[2])
    return z * cand + (1 - z) * h


def lstm_block_step(s, u, p):
    """ParaLSTM recurrence (coupled gates, peepholes), 2×2 blocks. s (2, N) = [c, h],
    u (3, N), p (5, N) = [a_f, a_c, a_o, p_f, p_o]."""
    c, h = s[0], s[1]
    f = jax.nn.sigmoid(p[0] * h + u[0] + p[3] * c)
    c_new = f * c + (1 - f) * jnp.tanh(p[1] * h + u[1])
    o = jax.nn.sigmoid(p[2] * h + u[2] + p[4] * c_new)
    return jnp.stack([c_new, o * jnp.tanh(c_new)])


def gru_dense_step(h, u, w):
    """Standard GRU recurrence, dense Jacobian. h (D,), u (3, D), w (3, D, D)."""
    z = jax.nn.sigmoid(w[0] @ h + u[0])
    r = jax.nn.sigmoid(w[1] @ h + u[1])
    cand = jnp.tanh(w[2] @ (r * h) + u[2])
    return z * cand + (1 - z) * h


def make_cell_problem(structure: str, length: int, hidden: int, batch: int, dtype, seed: int = 0):
    """Inputs (batch, T, 3, ·), parameters and h0 for the benchmark cell of ``structure``,
    initialised like trained-to-be cells: small recurrent weights, so Newton converges in a
    few iterations. ``hidden`` is the total state size (block: 2 × hidden/2)."""
    k_u, k_p = jax.random.split(jax.random.key(seed))
    if structure == "diagonal":
        u = jax.random.normal(k_u, (batch, length, 3, hidden), dtype)
        std = 2.0 / np.sqrt(5.0 * hidden)
        p = jnp.clip(std * jax.random.normal(k_p, (3, hidden), dtype), -0.5, 0.5)
        return gru_diag_step, u, p, jnp.zeros((hidden,), dtype)
    if structure == "block":
        n = hidden // 2
        u = jax.random.normal(k_u, (batch, length, 3, n), dtype)
        p = jnp.clip(0.3 * jax.random.normal(k_p, (5, n), dtype), -0.5, 0.5)
        return lstm_block_step, u, p, jnp.zeros((2, n), dtype)
    if structure == "dense":
        u = jax.random.normal(k_u, (batch, length, 3, hidden), dtype)
        w = 0.5 * jax.random.normal(k_p, (3, hidden, hidden), dtype) / np.sqrt(hidden)
        return gru_dense_step, u, w, jnp.zeros((hidden,), dtype)
    raise ValueError(f"unknown structure {structure!r}")


def working_set_bytes(structure: str, length: int, hidden: int, batch: int, itemsize: int = 4) -> int:
    """Rough peak bytes of a Newton solve + its backward: inputs, a handful of state-sized
    arrays, and the Jacobians (with their scan intermediates) — used to skip configurations
    that cannot fit this machine rather than to predict memory precisely."""
    states = batch * length * hidden
    jac = {"diagonal": states, "block": states * 2, "dense": states * hidden}[structure]
    return itemsize * (3 * states + 8 * states + 3 * jac)
