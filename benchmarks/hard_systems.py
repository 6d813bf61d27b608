"""Hard systems for the Newton solver: does it converge in parallel, in how many iterations,
and does it give up quickly where it cannot?

    python benchmarks/hard_systems.py                       # the full suite (~20 min on 2 cores)
    python benchmarks/hard_systems.py --quick               # a few systems, T = 1000
    python benchmarks/hard_systems.py --lengths 1000 --dtypes float64

Systems (from the peers' papers and code; see benchmarks/RESULTS.md, "Hard systems"):

- ``tanh_rnn``: ``h' = tanh(W h + U x)`` with W scaled to spectral radius ρ ∈ {1.5, 2, 3}
  (ELK / the predictability paper's contractive-on-average RNNs; DEER and ELK need 40–55
  Newton iterations at ρ = 2, T = 10 000). Dense Jacobians.
- ``deer_gru``: DEER's own "difficult" GRU test (nh = nx = 2, weights ×100, inputs /100).
- ``gru_large``: pararnn's Flax-compatible GRU cell, orthogonal recurrent weights ×3, D = 16.
- ``logistic``: the logistic map ``h' = r h (1 − h)`` for r = 2.8 (contracting), 3.5
  (periodic) and 3.9 (chaotic: positive Lyapunov exponent, not parallelisable).
- ``paragru_lm``: the ParaGRU layers of a trained ``tiny`` language model (trained here first
  if ``--lm-workdir`` has no checkpoint), on held-out text of length T.

Variants: ``before`` reproduces the solver this change replaced (undamped Newton, at most 32
iterations, no stall detection); ``after`` is today's defaults (adaptive damping, budget
``T/(2·log2 T)``, stall detection); ``undamped`` is today's budget without damping (an
ablation); ``quasi`` is quasi-Newton with today's defaults (dense systems only). Each row
reports iterations, whether the parallel solve converged (no fallback), whether it stalled,
the damping used and the error against a float64 sequential loop. The Lyapunov exponent of
the true trajectory says whether a system is predictable (< 0) at all.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import pararnn
from common import environment, markdown_table, write_json

VARIANTS = {
    "before": dict(method="newton", damping=0.0, max_iters=32, patience=10**9),
    "after": dict(method="newton"),
    "undamped": dict(method="newton", damping=0.0),
    "quasi": dict(method="quasi"),
}


# ---- systems: each returns (step, h0, xs, params, jacobian) in float64 --------------------


def tanh_rnn(t: int, rho: float, d: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, d)) / np.sqrt(d)
    w *= rho / np.max(np.abs(np.linalg.eigvals(w)))
    u = rng.normal(size=(d, d)) / np.sqrt(d)
    xs = rng.normal(size=(t, d)) @ u.T

    def step(h, x, w):
        return jnp.tanh(w @ h + x)

    return step, np.zeros(d), xs, w, "dense"


def deer_gru(t: int, seed: int = 0):
    """DEER's tests/test_deer.py "difficult" case: uniform(−1, 1)/√fan_in weights ×100,
    inputs N(0, 1)/100, random h0 (our own construction of the same distribution)."""
    rng = np.random.default_rng(seed)
    nh = nx = 2
    m = 100.0
    uni = lambda *shape: rng.uniform(-1, 1, size=shape)
    w_i = uni(3, nh, nx) / np.sqrt(nx) * m
    w_h = uni(3, nh, nh) / np.sqrt(nh) * m
    b = uni(3, nh) / np.sqrt(nh)
    xs = rng.normal(size=(t, nx)) / m
    h0 = rng.normal(size=(nh,))

    def step(h, x, p):
        w_i, w_h, b = p
        r = jax.nn.sigmoid(w_i[0] @ x + w_h[0] @ h + b[0])
        z = jax.nn.sigmoid(w_i[1] @ x + w_h[1] @ h + b[1])
        n = jnp.tanh(w_i[2] @ x + r * (w_h[2] @ h + b[2]))
        return (1 - z) * n + z * h

    return step, h0, xs, (w_i, w_h, b), "dense"


def gru_large(t: int, scale: float = 3.0, d: int = 16, seed: int = 0):
    from pararnn.cells import GRUCell

    cell = GRUCell(d, d, recurrent_scale=scale)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                    cell.init(jax.random.key(seed), jnp.float64))
    x = np.random.default_rng(seed).normal(size=(t, d))
    us = np.asarray(cell.project(params, jnp.asarray(x)))
    return cell.step, np.zeros(d), us, params, cell.jacobian


def logistic(t: int, r: float, d: int = 4, seed: int = 0):
    h0 = np.random.default_rng(seed).uniform(0.1, 0.9, size=(d,))

    def step(h, x, r):
        return r * h * (1 - h) + 0 * x

    return step, h0, np.zeros((t, d)), np.float64(r), "diagonal"


def lm_layers(t: int, workdir: str):
    """The recurrences of each ParaGRU layer of a trained tiny LM on held-out text."""
    from pararnn.train.restore import load_trained
    from pararnn.train.synthetic import synthetic_text

    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        subprocess.run([sys.executable, os.path.join(root, "train.py"), "--config", "tiny",
                        "--workdir", workdir, "--set", "train.progress=false"], check=True)
    _, model, _ = load_trained(workdir)
    text = " ".join(synthetic_text(400, seed=12345)["text"])  # not the training seed
    tokens = jnp.asarray(np.frombuffer(text.encode()[:t], np.uint8).astype(np.int32))[None]
    x = model.embed(tokens)
    systems = []
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        h, _ = jnp.split(mixer.in_proj(block.mixer_norm(x)), 2, axis=-1)
        h = jax.nn.silu(mixer.conv(h)[0])
        cell = mixer.cell.cell
        params = {k: np.asarray(getattr(mixer.cell, k)[...], np.float64) for k in mixer.cell.param_names}
        us = np.asarray(cell.project(params, jnp.asarray(np.asarray(h[0]), jnp.float64)))
        systems.append((f"paragru_lm layer {i}", (cell.step, np.zeros(cell.state_shape), us, params,
                                                  cell.structure)))
        x = block(x, mode="sequential")[0]
    return systems


def suite(lengths, quick: bool, lm_workdir: str | None):
    """Yields ``(name, T, system)``."""
    rhos = (2.0,) if quick else (1.5, 2.0, 3.0)
    for t in lengths:
        for rho in rhos:
            yield f"tanh_rnn ρ={rho} D=8", t, tanh_rnn(t, rho)
        if not quick:
            yield "tanh_rnn ρ=2 D=4", t, tanh_rnn(t, 2.0, d=4)
            yield "tanh_rnn ρ=2 D=16", t, tanh_rnn(t, 2.0, d=16)
        yield "deer_gru (×100 weights)", t, deer_gru(t)
        yield "gru_large (×3 recurrent)", t, gru_large(t)
        for r in ((3.9,) if quick else (2.8, 3.5, 3.9)):
            yield f"logistic r={r}", t, logistic(t, r)
        if lm_workdir:
            for name, system in lm_layers(t, lm_workdir):
                yield name, t, system


# ---- measurement ----------------------------------------------------------------------------


def lyapunov(step, h0, xs, params, ref) -> float:
    """Largest Lyapunov exponent of the true trajectory (renormalised tangent propagation)."""
    hprev = np.concatenate([np.asarray(h0)[None], ref[:-1]])
    jac = jax.jit(jax.vmap(jax.jacfwd(step), in_axes=(0, 0, None)))(
        jnp.asarray(hprev.reshape(len(ref), -1)), xs, params)
    jac = np.asarray(jac).reshape(len(ref), hprev[0].size, hprev[0].size)
    v = np.ones(hprev[0].size) / math.sqrt(hprev[0].size)
    total = 0.0
    for j in jac:
        v = j @ v
        n = np.linalg.norm(v)
        if n == 0:
            return -math.inf
        total += math.log(n)
        v /= n
    return total / len(jac)


def run_system(name, t, system, dtypes, variants):
    step, h0, xs, params, jacobian = system
    ref = np.asarray(pararnn.solve(step, jnp.asarray(h0), jnp.asarray(xs), params,
                                   method="sequential"), np.float64)
    lyap = lyapunov(step, h0, jnp.asarray(xs), params, ref)
    rows = []
    for dtype in dtypes:
        cast = lambda a: jnp.asarray(a, dtype)
        p = jax.tree_util.tree_map(cast, params)
        h0_d, xs_d = cast(h0), cast(xs)
        for variant in variants:
            kw = VARIANTS[variant]
            structure = jacobian if isinstance(jacobian, str) else "callable"
            if variant == "quasi" and structure == "diagonal":
                continue  # identical to newton
            fn = jax.jit(lambda h0_d, xs_d, p, kw=kw: pararnn.solve(
                step, h0_d, xs_d, p, jacobian=jacobian, return_info=True, fallback="none", **kw))
            start = time.perf_counter()
            hs, info = jax.block_until_ready(fn(h0_d, xs_d, p))
            seconds = time.perf_counter() - start
            err = float(np.abs(np.asarray(hs, np.float64) - ref).max()) if bool(info.converged) else None
            rows.append(dict(system=name, T=t, dtype=jnp.dtype(dtype).name, variant=variant,
                             lyapunov=round(lyap, 3), iterations=int(info.iterations),
                             converged=bool(info.converged), stalled=bool(info.stalled),
                             rejected=int(info.rejected), damping=float(info.damping),
                             err=err, seconds_incl_compile=round(seconds, 2)))
            print(markdown_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    return rows


COLUMNS = [("system", "system"), ("T", "T"), ("dtype", "dtype"), ("lyapunov", "Lyapunov"),
           ("variant", "variant"), ("iterations", "iters"), ("converged", "converged"),
           ("stalled", "stalled"), ("rejected", "rejected"), ("damping", "max λ"),
           ("err", "max err vs f64 loop")]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="a few systems at T = 1000")
    ap.add_argument("--lm-workdir", default=None,
                    help="a tiny LM run to take trained ParaGRU layers from (trained if empty)")
    ap.add_argument("--out", default="benchmarks/results/hard_systems.json")
    args = ap.parse_args(argv)
    lengths = [1000] if args.quick else args.lengths
    rows = []
    print("| " + " | ".join(h for _, h in COLUMNS) + " |")
    for name, t, system in suite(lengths, args.quick, args.lm_workdir):
        rows += run_system(name, t, system, [jnp.dtype(d) for d in args.dtypes], args.variants)
    table = markdown_table(rows, COLUMNS)
    write_json(args.out, {"environment": environment(), "command": " ".join(sys.argv), "rows": rows})
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(table + "\n")
    print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
