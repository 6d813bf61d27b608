"""The training workdir: what run it holds, and whether this config may continue it.

``DIR/config.yaml`` is the resolved config of the run (written at every start, readable with
``--config DIR/config.yaml``); every checkpoint also records the config it was saved with.
Resuming compares that record with the config given now, key by key:

- keys in :data:`RESUMABLE_KEYS` (how long, how often to log / evaluate / save, the device
  mesh, the solver mode, rematerialisation, gradient accumulation) may change: the run
  continues and the changes are reported;
- any other difference (the model, the data, the optimizer, the seeds) would mix two
  experiments in one curve: :func:`mismatch_message` explains the two ways out.

``train.resume=false`` starts afresh in the same workdir; the previous run's checkpoints,
metrics and config are moved to ``DIR/previous/<time>/`` (never deleted).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any

import jax
import yaml

from .config import Config, ConfigError, config_to_dict

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
PREVIOUS_DIR = "previous"
_RUN_FILES = ("checkpoints", METRICS_FILE, CONFIG_FILE, "corrupt_checkpoints")

# Keys that may differ between the stored run and a resume: they change how long the run goes,
# what is logged and saved, how the work is laid out on devices and how the recurrence is solved
# or rematerialised — not what is trained.
RESUMABLE_KEYS = frozenset({
    "name", "train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.progress", "train.stop_after", "train.resume", "train.spawn_from",
    "train.spawn_step", "data.eval_batches", "mesh.data", "mesh.fsdp", "mesh.seq", "mesh.devices", "model.mode",
    "model.solver_method", "model.remat", "optim.grad_accum",
})
_QUIET_KEYS = frozenset({"train.resume", "train.spawn_from", "train.spawn_step"})  # not worth a line


@dataclasses.dataclass(frozen=True)
class Difference:
    key: str
    stored: Any
    now: Any

    def describe(self) -> str:
        return f"{self.key}: {_show(self.stored)} in the stored run, {_show(self.now)} now"


_MISSING = object()


def _show(value) -> str:
    return "(not set)" if value is _MISSING else json.dumps(value)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(stored: dict, cfg: Config) -> list[Difference]:
    """Keys whose value differs between a stored config dict and ``cfg``. A key the stored
    config lacks (a field added since) counts as its default value."""
    now = _flatten(config_to_dict(cfg))
    then = {**_flatten(config_to_dict(Config())), **_flatten(stored)}
    diffs = []
    for key in sorted(set(now) | set(then)):
        a, b = then.get(key, _MISSING), now.get(key, _MISSING)
        if a != b:
            diffs.append(Difference(key, a, b))
    return diffs


def split_differences(diffs: list[Difference]) -> tuple[list[Difference], list[Difference]]:
    """``(blocking, allowed)``: differences that forbid resuming, and those reported only."""
    blocking = [d for d in diffs if d.key not in RESUMABLE_KEYS]
    allowed = [d for d in diffs if d.key in RESUMABLE_KEYS and d.key not in _QUIET_KEYS]
    return blocking, allowed


def mismatch_message(workdir: str, step: int, blocking: list[Difference]) -> str:
    lines = "\n".join("  " + d.describe() for d in blocking)
    keys = ", ".join(d.key for d in blocking)
    stored = os.path.join(workdir, CONFIG_FILE)
    tail = f" To continue the stored run instead, use its config: --config {stored}." if os.path.exists(stored) else ""
    return (f"workdir {workdir!r} holds a run (checkpoint step {step}) trained with a different {keys}; "
            f"resuming it with this config would mix two experiments in one run:\n{lines}\n"
            f"Either give the new run its own directory with --workdir DIR, or start it afresh here with "
            f"--set train.resume=false (the stored run's checkpoints and metrics are moved to "
            f"{os.path.join(workdir, PREVIOUS_DIR)}/<time>/, not deleted).{tail}")


def check_workdir_path(workdir: str) -> None:
    """A usable workdir: a directory, or a path where one can be made."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir!r} is an existing file, not a directory; pass a directory "
                          f"(it is created if missing).")
    parent = os.path.dirname(os.path.abspath(workdir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--workdir {workdir!r}: {parent!r} is a file, so the directory cannot be created.")
    target = workdir if os.path.isdir(workdir) else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir!r}: no permission to write in {target!r}.")


def holds_run(workdir: str) -> bool:
    """Whether ``workdir`` has anything of a previous run (checkpoints, metrics or its config)."""
    return any(os.path.exists(os.path.join(workdir, name)) for name in _RUN_FILES)


def move_previous_run(workdir: str) -> str | None:
    """Move the previous run's files to ``workdir/previous/<time>/`` (process 0 moves; every
    process returns the path). None when there was nothing to move."""
    if not holds_run(workdir):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = os.path.join(workdir, PREVIOUS_DIR, stamp)
    n = 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(workdir, PREVIOUS_DIR, f"{stamp}.{n}")
    if jax.process_index() == 0:
        os.makedirs(target)
        for name in _RUN_FILES:
            if os.path.exists(os.path.join(workdir, name)):
                shutil.move(os.path.join(workdir, name), os.path.join(target, name))
    _sync("pararnn-move-previous-run")
    return target


def write_config(workdir: str, cfg: Config) -> None:
    """Write the resolved config to ``workdir/config.yaml`` atomically (process 0)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, CONFIG_FILE)
    tmp = path + ".tmp"
    values = config_to_dict(cfg)
    values["train"]["resume"] = True  # this file continues the run; it must not start it afresh again
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("# The resolved config of this run (written by pararnn-train; resume with --config this file).\n")
        yaml.safe_dump(values, f, sort_keys=False)
    os.replace(tmp, path)


def last_metrics(workdir: str, up_to_step: int) -> dict | None:
    """The last record of ``workdir/metrics.jsonl`` at or before ``up_to_step``."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", math.inf) <= up_to_step:
                last = record
    return last


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
