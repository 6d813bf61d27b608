"""Block-Jacobian combine on the backend at hand: the unrolled elementwise product that
``pararnn.structure`` uses for blocks of size K <= 16 vs the batched einsum it replaced.

    python benchmarks/block_compose.py            # prints a table, writes results/block_compose_<backend>.{json,md}

Both compose (T, N, K, K) @ (T, N, K, K) blocks; the max difference between them is
reported (float32 rounding)."""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, markdown_table, time_fn, write_json  # noqa: E402

from pararnn.structure import BLOCK  # noqa: E402

SHAPES = [(512, 512, 2), (512, 256, 4), (512, 64, 6), (512, 64, 8), (512, 16, 16)]  # (T, N, K)


def einsum_compose(a2, a1):
    return jnp.einsum("...nij,...njk->...nik", a2, a1, precision=lax.Precision.HIGHEST)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None, help="output path without extension")
    args = p.parse_args(argv)
    env = environment()
    rows = []
    for t, n, k in SHAPES:
        a2 = jax.random.normal(jax.random.key(0), (t, n, k, k), jnp.float32)
        a1 = jax.random.normal(jax.random.key(1), (t, n, k, k), jnp.float32)
        unrolled, einsum = jax.jit(BLOCK.compose), jax.jit(einsum_compose)
        tu = time_fn(unrolled, a2, a1, repeats=args.repeats)["median_s"]
        te = time_fn(einsum, a2, a1, repeats=args.repeats)["median_s"]
        err = float(jnp.abs(unrolled(a2, a1) - einsum(a2, a1)).max())
        rows.append({"shape": f"({t}, {n}, {k}, {k})", "K": k, "einsum_ms": te * 1e3,
                     "unrolled_ms": tu * 1e3, "speedup": te / tu, "max_abs_diff": err})
        print(f"{rows[-1]['shape']:>20}  einsum {te * 1e3:8.3f} ms  unrolled {tu * 1e3:8.3f} ms  "
              f"{te / tu:6.2f}x  diff {err:.1e}", flush=True)
    table = markdown_table(rows, [("shape", "blocks (T, N, K, K)"), ("einsum_ms", "einsum (ms)"),
                                  ("unrolled_ms", "unrolled (ms)"), ("speedup", "speedup"),
                                  ("max_abs_diff", "max |diff|")])
    command = "python benchmarks/block_compose.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"block_compose_{env['backend']}")
    write_json(out + ".json", {"environment": env, "command": command, "results": rows})
    with open(out + ".md", "w") as f:
        f.write(f"# Block compose — {env['date']}, JAX {env['jax']}, {env['backend']} "
                f"({env['cpu_count']} CPU cores)\n\n`{command}`\n\n{table}\n")
    print("\n" + table + f"\n\nwrote {out}.json/.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
