"""Cost model of every solve path against the memory floor — PREDICTED, not measured.

    python benchmarks/roofline.py            # ParaGRU/ParaLSTM, B=8, D=1024, T ∈ {1024, 4096, 16384}
    python benchmarks/roofline.py --quick    # tiny sizes (CI smoke test)

For each path — the sequential ``lax.scan``, XLA Newton with the tree and the chunked scans,
and the fused Pallas kernels — and each pass (forward; forward + backward) it reports:

- bytes moved and FLOPs: from XLA's ``compiled.cost_analysis()`` (of the XLA:CPU compilation of
  the same program: GPU fusion differs) for XLA code, one loop body times its trip count; from
  the kernels' own accounting (:mod:`pararnn.kernels.cost`) for the fused kernels;
- the memory floor: inputs read once and states written once (forward), plus the cotangent
  read and the input gradient written once (backward); and bytes / floor;
- the dependent depth: kernel launches that must run one after another (T for the scan;
  iterations × levels for XLA Newton) and dependent steps inside kernels (the fused sweeps);
- a predicted time on an H200 and an A100: ``max(bytes / HBM bandwidth, FLOPs / fp32 peak)
  + launches × 5 µs + in-kernel steps × 0.1 µs``. The two latencies are assumptions (a
  typical XLA GPU kernel launch and loop iteration; ~180 cycles for one dependent step of a
  fused sweep), not measurements; transcendental throughput and occupancy are not modelled.

Newton iteration counts come from solving the same problem on this CPU (B = 1): they are a
property of the math, not of the device. Everything printed is a model until a GPU session
runs benchmarks/gpu_suite.py.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp

from common import environment, markdown_table, write_json
from gpu_problems import CELLS, make_problem
import pararnn
from pararnn.jacobians import JacobianSpec, linearize, vmap_over_time
from pararnn.kernels import StepPlan
from pararnn.kernels.cost import adjoint_cost, newton_cost
from pararnn.newton_loop import residual_stats
from pararnn.scan import _default_chunk, linear_recurrence
from pararnn.structure import get_structure

HARDWARE = {"H200": {"bw": 4.8e12, "flops": 67e12}, "A100": {"bw": 2.0e12, "flops": 19.5e12}}
LAUNCH_S = 5e-6  # assumed: one dependent XLA kernel launch / loop iteration on a GPU
KERNEL_STEP_S = 1e-7  # assumed: one dependent step of a fused sweep (~180 cycles)
PATHS = ("scan", "newton-tree", "newton-chunked", "fused")

COLUMNS = [("cell", "cell"), ("T", "T"), ("pass", "pass"), ("path", "path"),
           ("gbytes", "GB moved"), ("gflops", "GFLOP"), ("floor_gb", "floor GB"),
           ("bytes_over_floor", "bytes/floor"), ("launches", "dependent launches"),
           ("kernel_steps", "in-kernel dependent steps"), ("iterations", "Newton iters"),
           ("h200_ms", "H200 ms (predicted)"), ("a100_ms", "A100 ms (predicted)"),
           ("source", "bytes/FLOPs from")]


def xla_cost(fn, *args) -> tuple[float, float]:
    """(bytes accessed, flops) of ``fn`` from XLA's cost analysis of its CPU compilation."""
    ca = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0]
    return float(ca.get("bytes accessed", 0.0)), float(ca.get("flops", 0.0))


def _shift(h0, hs):
    return jnp.concatenate([h0[None], hs[:-1]], 0)


def xla_pieces(step, structure, h0, u, params, algorithm):
    """Costs of the pieces of the XLA Newton solve and its parallel adjoint, batched."""
    st = get_structure(structure)
    spec = JacobianSpec(st)
    f_all = vmap_over_time(step)

    def lin(h0_1, hs, xs):
        return linearize(step, spec, _shift(h0_1, hs), xs, params)

    def init(h0_1, xs):
        hs = f_all(jnp.zeros((xs.shape[0],) + h0_1.shape, h0_1.dtype), xs, params)
        fh, jac = lin(h0_1, hs, xs)
        return hs, fh, jac, residual_stats(fh, hs)

    def iteration(h0_1, xs, hs, fh, jac):
        delta = linear_recurrence(jac, fh - hs, jnp.zeros_like(h0_1), structure=st,
                                  algorithm=algorithm)
        cand = hs + delta.astype(hs.dtype)
        fh_c, jac_c = lin(h0_1, cand, xs)
        return cand, fh_c, jac_c, residual_stats(fh_c, cand)

    def backward(h0_1, xs, hs, g):
        hprev = _shift(h0_1, hs)
        _, jac = linearize(step, spec, hprev, xs, params)
        jt = st.transpose(jnp.concatenate([jac[1:], jnp.zeros_like(jac[:1])], 0))
        lam = linear_recurrence(jt, g, jnp.zeros_like(h0_1), structure=st, reverse=True,
                                algorithm=algorithm)
        _, vjp = jax.vjp(lambda hp, x: f_all(hp, x, params), hprev, xs)
        return vjp(lam.astype(hs.dtype))

    hs = jax.eval_shape(jax.vmap(init), h0, u)
    hs_like = jax.ShapeDtypeStruct(hs[0].shape, hs[0].dtype)
    return {
        "init": xla_cost(jax.vmap(init), h0, u),
        "iteration": xla_cost(jax.vmap(iteration), h0, u, *hs[:3]),
        "final": xla_cost(lambda hs: jnp.max(jnp.abs(hs)), hs_like),
        "backward": xla_cost(jax.vmap(backward), h0, u, hs_like, hs_like),
    }


def vjp_cost(step, h0, u, params):
    """The one batched VJP of the step over all t (the XLA part of both adjoints)."""
    f_all = vmap_over_time(step)

    def vjp(h0_1, xs, hs, lam):
        _, fn = jax.vjp(lambda hp, x: f_all(hp, x, params), _shift(h0_1, hs), xs)
        return fn(lam)

    hs = jax.ShapeDtypeStruct((u.shape[0], u.shape[1]) + h0.shape[1:], h0.dtype)
    return xla_cost(jax.vmap(vjp), h0, u, hs, hs)


def scan_costs(step, h0, u, params):
    """(forward per-step, backward per-step) costs of the sequential scan."""
    x_t = jax.ShapeDtypeStruct((u.shape[0],) + u.shape[2:], u.dtype)
    one = jax.vmap(lambda h, x: step(h, x, params))

    def back(h, x, g):
        _, fn = jax.vjp(lambda h, x: one(h, x), h, x)
        return fn(g)

    return xla_cost(one, h0, x_t), xla_cost(back, h0, x_t, h0)


def count_iterations(step, structure, h0, u, params) -> int:
    """Newton iterations of the XLA solve of the first sequence, on this CPU."""
    _, info = jax.jit(lambda h, x: pararnn.solve(step, h, x, params, jacobian=structure,
                                                  algorithm="chunked", return_info=True))(
        h0[0], u[0])
    return int(info.iterations)


def predict(gbytes, gflops, launches, steps) -> dict:
    out = {}
    for name, hw in HARDWARE.items():
        t = max(gbytes * 1e9 / hw["bw"], gflops * 1e9 / hw["flops"])
        t += launches * LAUNCH_S + steps * KERNEL_STEP_S
        out[name.lower() + "_ms"] = t * 1e3
    return out


def rows_for(cell_name: str, batch: int, length: int, hidden: int, dtype) -> list[dict]:
    cell, step, h0, u, params = make_problem(cell_name, batch, length, hidden, dtype)
    structure = cell.structure
    item = jnp.dtype(dtype).itemsize
    state = math.prod(cell.state_shape)
    in_bytes = batch * length * 3 * hidden * item
    hs_bytes = batch * length * state * item
    floor = {"forward": in_bytes + hs_bytes,
             "forward+backward": (in_bytes + hs_bytes) + (in_bytes + 2 * hs_bytes + in_bytes)}
    iters = count_iterations(step, structure, h0, u, params)
    log_t = max(1, math.ceil(math.log2(length)))
    chunk = _default_chunk(length)
    chunk_levels = chunk + 2 * max(1, math.ceil(math.log2(max(2, -(-length // chunk)))))
    rows = []

    def add(path, pass_, nbytes, flops, launches, steps, source):
        rows.append({"cell": cell_name, "T": length, "pass": pass_, "path": path,
                     "dtype": jnp.dtype(dtype).name, "batch": batch, "hidden": hidden,
                     "gbytes": nbytes / 1e9, "gflops": flops / 1e9,
                     "floor_gb": floor[pass_] / 1e9, "bytes_over_floor": nbytes / floor[pass_],
                     "launches": launches, "kernel_steps": steps,
                     "iterations": iters if path != "scan" else None, "source": source,
                     **predict(nbytes / 1e9, flops / 1e9, launches, steps)})

    (fb, ff), (bb, bf) = scan_costs(step, h0, u, params)
    add("scan", "forward", length * fb, length * ff, length, 0, "cost_analysis × T")
    add("scan", "forward+backward", length * (fb + bb), length * (ff + bf), 2 * length, 0,
        "cost_analysis × T")
    vjp_b, vjp_f = vjp_cost(step, h0, u, params)
    for algorithm in ("tree", "chunked"):
        pieces = xla_pieces(step, structure, h0, u, params, algorithm)
        levels = 2 * log_t if algorithm == "tree" else chunk_levels
        fwd_b = pieces["init"][0] + iters * pieces["iteration"][0] + pieces["final"][0]
        fwd_f = pieces["init"][1] + iters * pieces["iteration"][1] + pieces["final"][1]
        fwd_launch = 3 + iters * (levels + 4)
        add("newton-" + algorithm, "forward", fwd_b, fwd_f, fwd_launch, 0, "cost_analysis, iters ×")
        add("newton-" + algorithm, "forward+backward", fwd_b + pieces["backward"][0],
            fwd_f + pieces["backward"][1], fwd_launch + levels + 4, 0, "cost_analysis, iters ×")
    plan = StepPlan(step, h0[0], u[0], params, structure=get_structure(structure))
    fwd = newton_cost(plan, length, batch, iters)
    add("fused", "forward", fwd.bytes + hs_bytes, fwd.flops, 3, fwd.depth,
        "kernel accounting (+ XLA convergence read)")
    adj = adjoint_cost(plan, length, batch)
    add("fused", "forward+backward", fwd.bytes + hs_bytes + adj.bytes + vjp_b,
        fwd.flops + adj.flops + vjp_f, 5, fwd.depth + adj.depth,
        "kernel accounting + cost_analysis (VJP)")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke test)")
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", default="benchmarks/results/roofline")
    args = p.parse_args(argv)
    lengths = args.lengths or ([16, 64] if args.quick else [1024, 4096, 16384])
    batch = args.batch or (2 if args.quick else 8)
    hidden = args.hidden or (32 if args.quick else 1024)
    dtype = jnp.dtype(args.dtype)
    rows = []
    for cell_name in CELLS:
        for length in lengths:
            new = rows_for(cell_name, batch, length, hidden, dtype)
            rows += new
            for r in new:
                print(f"{cell_name:<9} T={length:<6} {r['pass']:<17} {r['path']:<15} "
                      f"{r['gbytes']:9.3f} GB  x{r['bytes_over_floor']:6.1f} floor  "
                      f"H200 {r['h200_ms']:9.3f} ms (predicted)", flush=True)
    env = environment()
    header = (f"# Cost model (PREDICTED, not measured) — {env['date']}, JAX {env['jax']}; "
              f"batch {batch}, hidden {hidden}, {dtype.name}; bytes/FLOPs from XLA:CPU "
              f"cost_analysis and the kernels' accounting on {env['processor']}; times = "
              f"max(bytes/BW, FLOPs/peak) + launches × {LAUNCH_S * 1e6:g} µs + in-kernel "
              f"steps × {KERNEL_STEP_S * 1e6:g} µs")
    table = markdown_table(rows, COLUMNS)
    print("\n" + header + "\n\n" + table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    write_json(args.out + ".json", {"environment": env, "argv": sys.argv, "predicted": True,
                                    "hardware": HARDWARE, "launch_s": LAUNCH_S,
                                    "kernel_step_s": KERNEL_STEP_S, "rows": rows})
    print(f"wrote {args.out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
