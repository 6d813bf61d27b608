"""Everything a GPU session should measure, in one command (budgeted to finish within 8
minutes on one H200; not yet run on a GPU).

    python benchmarks/gpu_suite.py                 # on a GPU: the full suite
    python benchmarks/gpu_suite.py --quick         # tiny sizes on any backend (CI smoke test)

Solves ParaGRU and ParaLSTM recurrences (batch 8, hidden 1024, T ∈ {1024, 4096, 16384},
float32 and bfloat16), forward and forward + backward, by three paths:

- ``scan``: the sequential ``lax.scan`` (backward: backpropagation through it);
- ``newton``: XLA Newton (``algorithm="tree"``, the parallel adjoint in XLA);
- ``fused``: the Pallas kernels (``algorithm="fused"``; interpret mode off CUDA).

For each: the median time of repeated calls, the compile time, XLA's memory analysis of the
compiled program, Newton iterations, and the error against the sequential scan (states, and
gradients relative to max(1, |g|)). Then the train step of ``gru125m`` (tokens/s, MFU) with
its recurrence solved in parallel (``mode=parallel``; ``algorithm="auto"`` picks the fused
kernels on CUDA) and sequentially, and the device's peak memory. Configurations run most
important first (float32 solves, the train step, bfloat16 solves); once ``--budget-s`` is
spent the rest are listed as skipped, so the suite always finishes. Writes JSON and a
markdown table (default ``benchmarks/results/gpu_suite_<backend>``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from jax import lax

from common import environment, markdown_table, time_fn, write_json
from gpu_problems import CELLS, make_problem
import pararnn

PATHS = ("scan", "newton", "fused")
PASSES = ("forward", "forward+backward")
COLUMNS = [("cell", "cell"), ("dtype", "dtype"), ("T", "T"), ("pass", "pass"), ("path", "path"),
           ("ms", "time (ms)"), ("speedup_vs_scan", "× vs scan"), ("iterations", "Newton iters"),
           ("max_err", "error vs scan"), ("memory_mb", "XLA memory (MB)"), ("compile_s", "compile (s)"),
           ("note", "note")]


def _solver(path: str, step, structure, params):
    """``f(h0 (B, *S), u (B, T, ...)) -> (hs, iterations)`` for one path."""
    if path == "scan":
        def one(h0, u):
            def body(h, x):
                h = step(h, x, params)
                return h, h
            return lax.scan(body, h0, u)[1], jnp.zeros((), jnp.int32)
    else:
        algorithm = {"newton": "tree", "fused": "fused"}[path]

        def one(h0, u):
            hs, info = pararnn.solve(step, h0, u, params, jacobian=structure, method="newton",
                                     algorithm=algorithm, backward="parallel", return_info=True)
            return hs, info.iterations
    return jax.vmap(one)


def build(path: str, pass_: str, step, structure, params, weights):
    """The jitted function to time: forward states, or gradients of a weighted sum of the
    states with respect to the inputs and parameters (plus the Newton iterations)."""
    solver_of = lambda p: _solver(path, step, structure, p)
    if pass_ == "forward":
        def fwd(h0, u):
            hs, iters = solver_of(params)(h0, u)
            return hs, jnp.max(iters)
        return jax.jit(fwd)

    def loss(u, p, h0):
        hs, iters = solver_of(p)(h0, u)
        return jnp.sum(weights * hs.astype(jnp.float32)), jnp.max(iters)

    def fwd_bwd(h0, u):
        (_, iters), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(u, params, h0)
        return grads, iters
    return jax.jit(fwd_bwd)


def _memory_mb(fn, *args):
    try:
        ma = fn.lower(*args).compile().memory_analysis()
        total = sum(getattr(ma, k, 0) or 0 for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                      "output_size_in_bytes"))
        return total / 2**20
    except Exception:  # not every backend reports it
        return None


def _max_err(out, ref, pass_):
    if pass_ == "forward":
        return float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref.astype(jnp.float32))))
    errs = []
    for g, r in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(ref)):
        g, r = g.astype(jnp.float32), r.astype(jnp.float32)
        errs.append(float(jnp.max(jnp.abs(g - r)) / jnp.maximum(1.0, jnp.max(jnp.abs(r)))))
    return max(errs)


def run_solves(args, dtypes, deadline: float) -> list[dict]:
    rows = []
    for dtype_name in dtypes:
        for pass_ in args.passes:
            for cell_name in args.cells:
                for length in args.lengths:
                    dtype = jnp.dtype(dtype_name)
                    cell, step, h0, u, params = make_problem(cell_name, args.batch, length,
                                                             args.hidden, dtype)
                    weights = jax.random.normal(jax.random.key(1), h0.shape[:1] + (length,)
                                                + h0.shape[1:], jnp.float32)
                    ref, scan_ms = None, None
                    for path in args.paths:
                        row = {"cell": cell_name, "dtype": dtype_name, "T": length, "pass": pass_,
                               "path": path, "batch": args.batch, "hidden": args.hidden}
                        rows.append(row)
                        if time.perf_counter() > deadline:
                            row["note"] = "skipped: time budget"
                            continue
                        fn = build(path, pass_, step, cell.structure, params, weights)
                        try:
                            timing = time_fn(fn, h0, u, repeats=args.repeats)
                            out, iters = fn(h0, u)
                        except Exception as e:  # record and go on: one failure must not end the suite
                            row["note"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
                            print(f"  {row['note']}", flush=True)
                            continue
                        row.update(ms=timing["median_s"] * 1e3, compile_s=timing["compile_s"],
                                   iterations=int(iters) if path != "scan" else None,
                                   memory_mb=_memory_mb(fn, h0, u))
                        if path == "scan":
                            ref, scan_ms = out, row["ms"]
                        if ref is not None:
                            row["max_err"] = _max_err(out, ref, pass_)
                        if scan_ms:
                            row["speedup_vs_scan"] = scan_ms / row["ms"]
                        print(f"{cell_name:<9} {dtype_name:<8} T={length:<6} {pass_:<17} {path:<7} "
                              f"{row['ms']:10.3f} ms  iters {row['iterations']}  "
                              f"err {row.get('max_err', float('nan')):.2e}  "
                              f"compile {row['compile_s']:.1f} s", flush=True)
    return rows


def run_train(args, deadline: float) -> list[dict]:
    """Train-step throughput of the language model (parallel vs sequential recurrence)."""
    if args.no_train:
        return []
    from train_throughput import bench_one
    from pararnn.train.config import load_config

    rows = []
    for mode in ("parallel", "sequential"):
        if time.perf_counter() > deadline:
            rows.append({"config": args.train_config, "mode": mode, "note": "skipped: time budget"})
            continue
        # one device: the suite measures one accelerator (and a test process may have 8 fake CPUs)
        overrides = ["data.source=synthetic", "optim.grad_accum=1", "mesh.devices=1", "mesh.data=1", "mesh.fsdp=1",
                     f"data.seq_len={args.train_seq_len}", f"data.batch_size={args.train_batch}",
                     f"model.mode={mode}"]
        row = bench_one(load_config(args.train_config, overrides), steps=args.repeats, warmup=1)
        rows.append(row)
        print(f"train {args.train_config} {mode}: {row['tokens_per_sec']:.0f} tokens/s, "
              f"MFU {row['mfu']}", flush=True)
    return rows


def peak_memory_mb():
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:
        return None
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes for a CPU smoke test")
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--passes", nargs="+", default=list(PASSES), choices=PASSES)
    p.add_argument("--dtypes", nargs="+", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=360.0,
                   help="start no new configuration after this many seconds (default 360, so "
                        "that the last ones finish within 8 minutes)")
    p.add_argument("--no-train", action="store_true", help="skip the train-step benchmark")
    p.add_argument("--train-config", default=None)
    p.add_argument("--train-seq-len", type=int, default=None)
    p.add_argument("--train-batch", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    q = args.quick
    args.dtypes = args.dtypes or (["float32"] if q else ["float32", "bfloat16"])
    args.lengths = args.lengths or ([16] if q else [1024, 4096, 16384])
    args.batch = args.batch or (2 if q else 8)
    args.hidden = args.hidden or (32 if q else 1024)
    args.train_config = args.train_config or ("tiny" if q else "gru125m")
    args.train_seq_len = args.train_seq_len or (32 if q else 2048)
    args.train_batch = args.train_batch or (2 if q else 16)
    args.out = args.out or f"benchmarks/results/gpu_suite_{jax.default_backend()}"
    start = time.perf_counter()
    deadline = start + args.budget_s
    # most important first: float32 solves, the train step, then bfloat16 solves
    rows = run_solves(args, args.dtypes[:1], deadline)
    train_rows = run_train(args, deadline)
    rows += run_solves(args, args.dtypes[1:], deadline)
    env = environment()
    env["peak_memory_mb"] = peak_memory_mb()
    env["wall_s"] = time.perf_counter() - start
    header = (f"# GPU suite — {env['date']}, JAX {env['jax']}, {env['backend']} ({env['device']}), "
              f"batch {args.batch}, hidden {args.hidden}; measured on this device "
              f"(peak memory {env['peak_memory_mb']} MB, {env['wall_s']:.0f} s)")
    table = markdown_table(rows, COLUMNS)
    if train_rows:
        table += "\n\n" + markdown_table(train_rows, [
            ("config", "config"), ("mode", "mode"), ("batch", "batch"), ("seq_len", "seq len"),
            ("step_ms", "step (ms)"), ("tokens_per_sec", "tokens/s"), ("mfu", "MFU"),
            ("newton_iterations", "Newton iters"), ("note", "note")])
    print("\n" + header + "\n\n" + table)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    write_json(args.out + ".json", {"environment": env, "argv": sys.argv if argv is None else argv,
                                    "rows": rows, "train": train_rows})
    print(f"wrote {args.out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
