"""Sequence parallelism: what crosses the devices per Newton iteration, and whether splitting
a sequence changes the iteration.

    python benchmarks/seq_parallel.py            # 8 fake CPU devices
    python benchmarks/seq_parallel.py --quick

Communication is counted from the traced program, not from a formula: the jaxpr of one
sharded solve is walked, and the collectives inside the Newton loop's body (ppermute,
all_gather, psum/pmax/pmin) are summed by the bytes each device sends. Branches that run
only on a rejected damped step or on the fallback are excluded (they are loops of their
own and normally run zero times). The activations a device holds are its shard of the states
(``T/n × state``); the ratio shows the exchange is O(state) per device, not O(T).

Iterations vs device count: the same global sequence solved on n = 1, 2, 4, 8 devices. The
iteration is the same algorithm whatever n (only the rounding of the cross-device fold
differs), so the counts should not change. Times on fake CPU devices are printed for
completeness only: the devices share this machine's cores, so they mean nothing.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse
import time

import numpy as np
import jax
import jax.extend
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

import pararnn
from common import environment, make_cell_problem, markdown_table, write_json

COLLECTIVES = {"ppermute", "all_gather", "psum", "pmax", "pmin", "psum_invariant", "all_to_all"}


def _bytes(aval) -> int:
    return int(np.prod(aval.shape)) * jnp.dtype(aval.dtype).itemsize


def _collectives(jaxpr, skip_loops: bool) -> dict:
    """Bytes sent per device by the collectives of ``jaxpr`` (recursing into calls and
    conditionals; nested while loops skipped when ``skip_loops``)."""
    out: dict = {}
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in COLLECTIVES:
            out[name] = out.get(name, 0) + sum(_bytes(v.aval) for v in eqn.invars)
        if name == "while" and skip_loops:
            continue
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            for k, v in _collectives(sub, skip_loops=True).items():
                out[k] = out.get(k, 0) + v
    return out


def _newton_loop_body(jaxpr):
    """The body of the outermost while loop that contains an all_gather (the Newton loop:
    its linear solves exchange the per-device summaries)."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            body = eqn.params["body_jaxpr"].jaxpr
            if "all_gather" in _collectives(body, skip_loops=True):
                return body
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found = _newton_loop_body(sub)
            if found is not None:
                return found
    return None


def communication(structure: str, hidden: int, length: int, n: int, method: str) -> dict:
    step, u, p, h0 = make_cell_problem(structure, length, hidden, 1, jnp.float32)
    mesh = Mesh(np.array(jax.devices()[:n]), ("seq",))
    fn = jax.shard_map(lambda u: pararnn.solve(step, h0, u, p, jacobian=structure, method=method,
                                               seq_axis="seq"),
                       mesh=mesh, in_specs=P("seq"), out_specs=P("seq"))
    body = _newton_loop_body(jax.make_jaxpr(fn)(u[0]).jaxpr)
    per_iter = _collectives(body, skip_loops=True)
    sent = sum(per_iter.values())
    shard_states = (length // n) * int(np.prod(h0.shape)) * 4
    return {"structure": structure, "D": hidden, "T": length, "devices": n, "method": method,
            "bytes_per_iter": sent, "shard_activation_bytes": shard_states,
            "ratio": sent / shard_states,
            "breakdown": ", ".join(f"{k} {v}" for k, v in sorted(per_iter.items()))}


def iterations(structure: str, hidden: int, length: int, method: str, counts) -> list[dict]:
    step, u, p, h0 = make_cell_problem(structure, length, hidden, 1, jnp.float32)
    u = u[0]
    reference = pararnn.solve(step, h0, u, p, jacobian=structure, method="sequential")
    rows = []
    for n in counts:
        mesh = Mesh(np.array(jax.devices()[:n]), ("seq",))
        fn = jax.jit(lambda u: pararnn.solve_sharded(step, h0, u, p, mesh=mesh, jacobian=structure,
                                                     method=method, return_info=True))
        hs, info = jax.block_until_ready(fn(u))
        start = time.perf_counter()
        jax.block_until_ready(fn(u))
        rows.append({"structure": structure, "D": hidden, "T": length, "method": method,
                     "devices": n, "iterations": int(info.iterations),
                     "converged": bool(info.converged),
                     "max_err": float(jnp.max(jnp.abs(hs - reference))),
                     "fake_device_ms": (time.perf_counter() - start) * 1e3})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/seq_parallel.json")
    args = ap.parse_args(argv)
    lengths = [4096] if args.quick else [4096, 65536]
    comm = []
    for structure, hidden, method in [("diagonal", 256, "newton"), ("block", 256, "newton"),
                                      ("dense", 64, "quasi"), ("dense", 64, "newton")]:
        for t in lengths:
            for n in (2, 8):
                comm.append(communication(structure, hidden, t, n, method))
                print(markdown_table(comm[-1:], COMM).splitlines()[-1], flush=True)
    iters = []
    for structure, hidden, method in [("diagonal", 64, "newton"), ("block", 64, "newton"),
                                      ("dense", 16, "quasi")]:
        iters += iterations(structure, hidden, 4096, method, (1, 2, 4, 8))
        print(markdown_table(iters[-4:], ITERS), flush=True)
    text = ("### bytes sent per device per Newton iteration\n\n" + markdown_table(comm, COMM)
            + "\n\n### iterations vs device count (fake CPU devices: times mean nothing)\n\n"
            + markdown_table(iters, ITERS))
    print("\n" + text)
    write_json(args.out, {"environment": environment(), "command": " ".join(sys.argv),
                          "communication": comm, "iterations": iters})
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {args.out}")
    return 0


COMM = [("structure", "structure"), ("D", "D"), ("T", "T"), ("devices", "devices"),
        ("method", "method"), ("bytes_per_iter", "bytes sent / device / iteration"),
        ("shard_activation_bytes", "shard's states (bytes)"), ("ratio", "ratio"),
        ("breakdown", "by collective")]
ITERS = [("structure", "structure"), ("D", "D"), ("T", "T"), ("method", "method"),
         ("devices", "devices"), ("iterations", "Newton iters"), ("converged", "converged"),
         ("max_err", "max err vs sequential"), ("fake_device_ms", "time (ms, fake devices)")]

if __name__ == "__main__":
    sys.exit(main())
