"""Check pararnn.working_set's memory estimate against XLA's own accounting.

    python benchmarks/working_set.py

For each structure, size and pass it compiles the parallel solve (forward: Newton/quasi
iterations; backward: ``jax.grad`` with the parallel adjoint) and compares
``working_set_bytes`` with ``compiled.memory_analysis()`` (arguments + outputs +
temporaries). The automatic choices replace a parallel pass whose estimate exceeds half the
device's memory, and an explicit request fails when it exceeds all of it, so the estimate
should be the right order of magnitude (ratio estimate / XLA near 1), not exact.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp

import pararnn
from pararnn.structure import get_structure
from pararnn.working_set import working_set_bytes
from common import environment, make_cell_problem, markdown_table, write_json


def xla_bytes(fn, *args) -> int:
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


def run(structure, hidden, batch, length, method):
    step, u, p, h0 = make_cell_problem(structure, length, hidden, batch, jnp.float32)

    def forward(u, p):
        return jax.vmap(lambda u_b: pararnn.solve(step, h0, u_b, p, jacobian=structure,
                                                  method=method, backward="parallel"))(u)

    def backward(u, p):
        return jax.grad(lambda u, p: jnp.sum(forward(u, p) ** 2), argnums=(0, 1))(u, p)

    st = get_structure(structure)
    rows = []
    for pass_, fn in (("forward", forward), ("backward", backward)):
        est = working_set_bytes(st, length, h0.shape, jnp.float32, pass_=pass_, method=method,
                                batch=batch)
        if pass_ == "backward":  # the gradient's forward runs first: count both
            est += working_set_bytes(st, length, h0.shape, jnp.float32, pass_="forward",
                                     method=method, batch=batch)
        xla = xla_bytes(fn, u, p)
        rows.append(dict(structure=structure, hidden=hidden, batch=batch, T=length, method=method,
                         pass_=pass_, estimate_mb=est / 2**20, xla_mb=xla / 2**20,
                         ratio=est / xla))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/working_set_cpu.json")
    args = ap.parse_args(argv)
    grid = [("diagonal", 64, 8, 4096, "newton"), ("diagonal", 256, 4, 2048, "newton"),
            ("block", 64, 8, 4096, "newton"), ("block", 256, 4, 2048, "quasi"),
            ("dense", 16, 4, 2048, "newton"), ("dense", 64, 2, 1024, "quasi"),
            ("dense", 64, 2, 1024, "newton")]
    rows = []
    for cfg in grid:
        rows += run(*cfg)
        print(markdown_table(rows[-2:], COLUMNS))
    text = markdown_table(rows, COLUMNS)
    print("\n" + text)
    write_json(args.out, {"environment": environment(), "command": " ".join(sys.argv), "rows": rows})
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text + "\n")


COLUMNS = [("structure", "structure"), ("hidden", "D"), ("batch", "batch"), ("T", "T"),
           ("method", "method"), ("pass_", "pass"), ("estimate_mb", "estimate (MB)"),
           ("xla_mb", "XLA (MB)"), ("ratio", "estimate / XLA")]

if __name__ == "__main__":
    main()
