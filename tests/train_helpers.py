"""Shared helpers for the training tests: a very small config and a subprocess runner."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# tiny, shrunk further: 2 layers of width 32, 32-token sequences, batch 8
SMALL = ["model.d_model=32", "data.num_examples=400", "data.seq_len=32", "data.batch_size=8",
         "train.log_every=1", "train.progress=false", "train.eval_every=0"]


def overrides(*extra):
    out = []
    for item in list(SMALL) + list(extra):
        out += ["--set", item]
    return out


def run_cli(args, env_extra=None, timeout=600, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py")] + list(args), capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}
