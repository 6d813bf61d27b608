"""Layer speedup benchmark: pararnn layers in parallel vs sequential mode vs Flax's standard
sequential layer (``nnx.RNN`` over ``nnx.GRUCell`` / ``nnx.OptimizedLSTMCell`` /
``nnx.SimpleCell``) at equal hidden size, forward and forward+backward.

    python benchmarks/speedup.py                       # full sweep (long; skips what won't fit)
    python benchmarks/speedup.py --quick               # minutes on a laptop CPU
    python benchmarks/speedup.py --plot results.png    # also a PNG (needs matplotlib: pip install -e .[plot])

Per configuration: median time, speedup of parallel over pararnn-sequential and over Flax,
the layer's default (``mode="auto"``, with the backward it picks; ``default_paths``) against
the better fixed mode, Newton iterations, max |parallel − sequential|, and XLA's compiled
peak-memory estimate (arguments + outputs + temporaries, from ``compiled.memory_analysis()``).
Every (forward, backward) pair is compared in ``benchmarks/modes.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx

import pararnn.nn as pnn
from common import environment, markdown_table, time_interleaved, write_json

LAYERS = {"ParaGRU": (pnn.ParaGRU, "GRUCell"), "ParaLSTM": (pnn.ParaLSTM, "OptimizedLSTMCell"),
          "GRU": (pnn.GRU, "GRUCell"), "LSTM": (pnn.LSTM, "OptimizedLSTMCell"),
          "Elman": (pnn.Elman, "SimpleCell")}
COLUMNS = [("layer", "layer"), ("hidden", "hidden"), ("batch", "batch"), ("T", "T"), ("mode", "mode"),
           ("parallel_ms", "parallel (ms)"), ("sequential_ms", "sequential (ms)"),
           ("default_ms", "default (ms)"), ("default_vs_best", "default / best"),
           ("flax_ms", "flax nnx.RNN (ms)"),
           ("speedup_vs_sequential", "speedup vs seq"), ("speedup_vs_flax", "speedup vs flax"),
           ("iterations", "Newton iters"), ("max_err", "max err"), ("parallel_peak_mb", "parallel peak (MB)"),
           ("sequential_peak_mb", "seq peak (MB)")]


def peak_mb(fn, *args) -> float | None:
    try:
        m = jax.jit(fn).lower(*args).compile().memory_analysis()
        return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2 ** 20
    except Exception:  # not every backend reports it
        return None


def working_set_bytes(layer: str, hidden: int, batch: int, length: int) -> int:
    per_state = batch * length * hidden * 4
    dense = layer in ("GRU", "LSTM", "Elman")
    jac = per_state * (hidden * (2 if layer == "LSTM" else 1) if dense else 2)
    return 16 * per_state + 3 * jac


def run_config(name, hidden, batch, length, modes, repeats, method):
    layer_cls, flax_cell = LAYERS[name]
    kw = {"method": method} if method and name in ("GRU", "LSTM", "Elman") else {}
    layer = layer_cls(hidden, hidden, rngs=nnx.Rngs(0), **kw)
    flax_rnn = nnx.RNN(getattr(nnx, flax_cell)(hidden, hidden, rngs=nnx.Rngs(0)), rngs=False)
    x = jax.random.normal(jax.random.key(1), (batch, length, hidden), jnp.float32)
    # Differentiate parameters only (nnx.RNN also carries integer RNG state).
    graph, state, rest = nnx.split(layer, nnx.Param, ...)
    fgraph, fstate, frest = nnx.split(flax_rnn, nnx.Param, ...)

    def forward(state, x, mode):
        return nnx.merge(graph, state, rest)(x, mode=mode)

    def flax_forward(state, x):
        zeros = jnp.zeros((x.shape[0], hidden), x.dtype)  # explicit carry: no RNG needed
        carry = (zeros, zeros) if "LSTM" in flax_cell else zeros
        return nnx.merge(fgraph, state, frest)(x, initial_carry=carry)

    def fwdbwd(fwd):
        return jax.grad(lambda s, x: jnp.mean(fwd(s, x) ** 2), argnums=(0, 1))

    fns = {"parallel": lambda s, x: forward(s, x, "parallel"),
           "sequential": lambda s, x: forward(s, x, "sequential"),
           "default": lambda s, x: forward(s, x, None), "flax": flax_forward}
    y_par = jax.jit(fns["parallel"])(state, x)
    y_seq = jax.jit(fns["sequential"])(state, x)
    recording = nnx.merge(graph, state, rest)
    recording.sow_info = True
    _, intermediates = nnx.capture(recording, nnx.Intermediate)(x, mode="parallel")  # the parallel solve's iterations
    info = intermediates["solver_info"][0]
    rows = []
    for mode in modes:
        jitted = {which: jax.jit(fn if mode == "fwd" else fwdbwd(fn)) for which, fn in fns.items()}
        args = {which: (fstate if which == "flax" else state, x) for which in fns}
        # interleaved: "default" is often the same program as one of the fixed modes, and
        # timing them minutes apart on a shared machine would report noise as a ratio
        times = time_interleaved(jitted, args, repeats=repeats)
        peaks = {which: peak_mb(fn if mode == "fwd" else fwdbwd(fn), *args[which]) for which, fn in fns.items()}
        rows.append({
            "layer": name, "hidden": hidden, "batch": batch, "T": length, "mode": mode,
            "parallel_ms": times["parallel"] * 1e3, "sequential_ms": times["sequential"] * 1e3,
            "default_ms": times["default"] * 1e3, "default_paths": "+".join(layer.paths(batch, length)),
            "default_vs_best": times["default"] / min(times["parallel"], times["sequential"]),
            "flax_ms": times["flax"] * 1e3,
            "speedup_vs_sequential": times["sequential"] / times["parallel"],
            "speedup_vs_flax": times["flax"] / times["parallel"],
            "iterations": int(info["iterations"]), "fell_back": bool(info["fell_back"]),
            "max_err": float(jnp.max(jnp.abs(y_par - y_seq))),
            "parallel_peak_mb": peaks["parallel"], "sequential_peak_mb": peaks["sequential"],
            "flax_peak_mb": peaks["flax"],
        })
    return rows


def plot(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e .[plot]); skipping the plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, mode in zip(axes, ["fwd", "fwdbwd"]):
        groups = {}
        for r in rows:
            if r["mode"] == mode:
                groups.setdefault((r["layer"], r["hidden"], r["batch"]), []).append(r)
        for (layer, hidden, batch), rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r["T"])
            ax.plot([r["T"] for r in rs], [r["speedup_vs_sequential"] for r in rs], marker="o",
                    label=f"{layer} D={hidden} B={batch}")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title({"fwd": "forward", "fwdbwd": "forward + backward"}[mode])
    axes[0].set_ylabel("speedup of parallel over sequential")
    axes[1].legend(fontsize=6)
    env = environment()
    fig.suptitle(f"pararnn layers, {env['backend']} ({env['device']}), JAX {env['jax']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    ap.add_argument("--lengths", type=int, nargs="+", default=[2 ** k for k in range(8, 17)])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    ap.add_argument("--dense-method", default="quasi", choices=["newton", "quasi"],
                    help="parallel method of the dense GRU/LSTM/Elman layers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-gb", type=float, default=3.0)
    ap.add_argument("--budget-minutes", type=float, default=None)
    ap.add_argument("--quick", action="store_true", help="T 256/4096, batch 1/8, hidden 64")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None, help="PNG path")
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.batches, args.hidden = [256, 4096], [1, 8], [64]
    env = environment()
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"speedup_{env['backend']}.json")
    payload = {"environment": env, "command": "python benchmarks/speedup.py " + " ".join(argv or sys.argv[1:]),
               "results": [], "skipped": [], "partial": False}
    started = time.time()
    for name in args.layers:
        for hidden in args.hidden:
            for batch in args.batches:
                for length in args.lengths:
                    need = working_set_bytes(name, hidden, batch, length)
                    if need > args.max_gb * 2 ** 30:
                        payload["skipped"].append({"layer": name, "hidden": hidden, "batch": batch, "T": length,
                                                   "working_set_gb": need / 2 ** 30})
                        continue
                    if args.budget_minutes and time.time() - started > 60 * args.budget_minutes:
                        payload["partial"] = True
                        continue
                    payload["results"] += run_config(name, hidden, batch, length, args.modes, args.repeats,
                                                     args.dense_method)
                    write_json(out, payload)
                    print(f"  done {name} hidden={hidden} batch={batch} T={length}", file=sys.stderr, flush=True)
    text = (f"# pararnn layers — {env['date']}, JAX {env['jax']}, {env['backend']} ({env['device']}), "
            f"{env['cpu_count']} CPU cores, float32; dense layers use method={args.dense_method!r}\n\n"
            + markdown_table(payload["results"], COLUMNS))
    print(text)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(text + "\n")
    if payload["skipped"]:
        print(f"\nSkipped {len(payload['skipped'])} configurations over --max-gb {args.max_gb}.")
    if payload["partial"]:
        print("Stopped early: --budget-minutes reached; results are partial.")
    write_json(out, payload)
    print(f"\nwrote {out}")
    if args.plot:
        plot(payload["results"], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
