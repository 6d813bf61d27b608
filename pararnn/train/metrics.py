"""Metrics: ``metrics.jsonl`` (one JSON object per logged step), a progress bar that degrades
to log lines when stderr is not a terminal, and an MFU estimate."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
from tqdm import tqdm

# Dense bf16 peak FLOP/s per chip, for the MFU estimate (None: unknown, MFU not reported).
_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12,
               "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops_per_device() -> float | None:
    kind = jax.devices()[0].device_kind
    for name, flops in _PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


def train_flops_per_token(n_params: int) -> float:
    """≈ 6·N: forward (2·N) and backward (4·N) matmul FLOPs per token; the recurrences'
    elementwise Newton work is comparatively small and not counted."""
    return 6.0 * n_params


class MetricsWriter:
    """Appends to ``workdir/metrics.jsonl`` on process 0. On resume, drops records past the
    restored step (written after the checkpoint by a run that then died), so the file holds
    one consistent curve."""

    def __init__(self, workdir: str, resume_step: int | None):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0
        if self.enabled and os.path.exists(self.path):
            keep = []
            if resume_step is not None:
                with open(self.path) as f:
                    for line in f:
                        try:
                            record = json.loads(line)
                        except json.JSONDecodeError:
                            continue  # a line cut short by a kill
                        if record.get("step", math.inf) <= resume_step:
                            keep.append(line if line.endswith("\n") else line + "\n")
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def announce(text: str) -> None:
    """A one-off message to the user (resume, warnings, interrupts), on stderr, process 0 only."""
    if jax.process_index() == 0:
        print(text, file=sys.stderr, flush=True)


class Progress:
    """tqdm on a terminal; otherwise a plain line every ``log_every`` steps."""

    def __init__(self, total: int, initial: int, enabled: bool, log_every: int):
        self.interactive = enabled and sys.stderr.isatty() and jax.process_index() == 0
        self.quiet = not enabled or jax.process_index() != 0
        self.log_every = log_every
        self.total = total
        self.bar = (tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, unit="step")
                    if self.interactive else None)
        self.start = time.time()

    def update(self, step: int, record: dict) -> None:
        text = f"loss {record['loss']:.4f}  {record['tokens_per_sec']:,.0f} tok/s"
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(text, refresh=True)
        elif not self.quiet and (step % self.log_every == 0 or "eval_loss" in record):
            extra = f"  eval loss {record['eval_loss']:.4f}" if "eval_loss" in record else ""
            lr = f"  lr {record['lr']:.2e}" if "lr" in record else ""
            width = len(str(self.total))
            print(f"step {step:>{width}}/{self.total}  {text}{lr}{extra}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """Important one-off messages (resume, preemption): shown even without a bar."""
        if jax.process_index() != 0:
            return
        (self.bar.write if self.bar is not None else announce)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
