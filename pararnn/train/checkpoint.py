"""Checkpoints with Orbax: atomic (written to a temporary directory, then committed), async,
keep the last K, restore the newest one that reads back.

A checkpoint holds the train state (parameters, optimizer state, step) and a JSON record of
the data position, the seeds, the schedule length and the config, so a resumed run continues
the same stream. A checkpoint that cannot be read back (a file truncated, deleted or
overwritten) is reported with the reason; :meth:`Checkpointer.set_aside` moves it out of
Orbax's directory (never deletes it) so the run can go on from the previous one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

CORRUPT_DIR = "corrupt_checkpoints"  # unreadable checkpoints are moved here, under the workdir


class UnreadableCheckpoint(Exception):
    """Checkpoint ``step`` cannot be read back; ``reason`` says what is wrong with it."""

    def __init__(self, step: int, path: str, reason: str):
        super().__init__(f"checkpoint step {step} ({path}) cannot be read: {reason}")
        self.step, self.path, self.reason = step, path, reason


class Checkpointer:
    """``workdir/checkpoints`` through an Orbax CheckpointManager. ``read_only=True`` (readers
    of another run: generation, spawning) saves nothing and leaves the unfinished temporary
    directories of a run that may still be writing alone."""

    def __init__(self, workdir: str, keep: int, async_save: bool = True, *, read_only: bool = False):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else keep,
                                               save_interval_steps=0 if read_only else 1,
                                               enable_async_checkpointing=async_save,
                                               cleanup_tmp_directories=not read_only, create=not read_only,
                                               read_only=read_only)
        with _absl_warnings_held(read_only):  # Orbax warns that a read-only directory is read-only
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def steps(self) -> list[int]:
        """Committed checkpoint steps, oldest first."""
        return sorted(self.manager.all_steps())

    def step_path(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: Any, meta: dict, *, wait: bool = False) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)
        if wait:
            self.manager.wait_until_finished()

    def read_meta(self, step: int) -> dict:
        """The JSON record of checkpoint ``step``; :class:`UnreadableCheckpoint` if it is damaged."""
        _check_files(step, self.step_path(step))
        try:
            with _quiet_on_failure():
                return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # Orbax raises many types for damaged files
            raise UnreadableCheckpoint(step, self.step_path(step), _reason(e)) from None

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """``(state, meta)`` of checkpoint ``step``; ``abstract_state``: ShapeDtypeStructs carrying
        the target shardings. :class:`UnreadableCheckpoint` if any of its files is damaged."""
        _check_files(step, self.step_path(step))
        try:
            with _quiet_on_failure():
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except Exception as e:
            raise UnreadableCheckpoint(step, self.step_path(step), _reason(e)) from None
        return restored["state"], restored["meta"]

    def set_aside(self, step: int) -> str:
        """Move checkpoint ``step`` to ``workdir/corrupt_checkpoints/`` (process 0; kept for
        inspection, never deleted) so Orbax neither resumes from it nor counts it among the
        kept checkpoints. Returns its new path."""
        target_dir = os.path.join(self.workdir, CORRUPT_DIR)
        target = os.path.join(target_dir, str(step))
        if jax.process_index() == 0:
            os.makedirs(target_dir, exist_ok=True)
            n = 1
            while os.path.exists(target):
                n += 1
                target = os.path.join(target_dir, f"{step}.{n}")
            shutil.move(self.step_path(step), target)
        if jax.process_count() > 1:  # every process sees the move before Orbax rescans
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"pararnn-set-aside-{step}")
        self.manager.reload()
        return target

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


# ---- damage detection ----------------------------------------------------------------------

# JSON files Orbax writes for every checkpoint of this layout (relative to the step directory);
# checked before Orbax reads, so a missing or cut file is named instead of surfacing as a
# misleading "pytree structure error" deep in the restore.
_JSON_FILES = ("state/_METADATA", "meta/metadata")


def _check_files(step: int, path: str) -> None:
    if not os.path.isdir(path):
        raise UnreadableCheckpoint(step, path, "its directory is missing")
    for rel in _JSON_FILES:
        full = os.path.join(path, rel)
        if not os.path.isfile(full):
            raise UnreadableCheckpoint(step, path, f"{rel} is missing")
        try:
            with open(full, "rb") as f:
                json.load(f)
        except (ValueError, OSError) as e:
            raise UnreadableCheckpoint(step, path, f"{rel} is not valid JSON (cut short?): {e}") from None
    if not os.path.isfile(os.path.join(path, "state", "manifest.ocdbt")):
        raise UnreadableCheckpoint(step, path, "state/manifest.ocdbt is missing")


def _reason(e: BaseException) -> str:
    """One line from an Orbax/TensorStore error (they embed pages of spec): the innermost
    two clauses of a TensorStore error chain, which name the damaged file."""
    text = str(e).split(" See full TensorStore details")[0].split(" [tensorstore_spec")[0].strip()
    clauses = re.split(r": (?=[A-Z])", text.splitlines()[0] if text else "")
    line = ": ".join(clauses[-2:])
    if len(line) > 300:
        line = line[:300] + " …"
    return f"{type(e).__name__}: {line}" if line else type(e).__name__


@contextlib.contextmanager
def _absl_warnings_held(active: bool):
    logger = logging.getLogger("absl")
    level = logger.level
    if active:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _drop_orbax_unraisables() -> None:
    """After a failed read, Orbax's pending read coroutines are garbage-collected whenever the
    failure's traceback is released — often after :func:`_quiet_on_failure` has handed
    ``sys.stderr`` back — and Python prints each as "Exception ignored in: <coroutine …>"
    with a traceback. Those repeat the error already reported in one line: from the first
    failure on, unraisable exceptions raised by Orbax coroutines are dropped (everything
    else still reaches the previous hook)."""
    previous = sys.unraisablehook
    if getattr(previous, "_pararnn_orbax_filter", False):
        return

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
            return
        previous(unraisable)

    hook._pararnn_orbax_filter = True
    sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_on_failure(settle_s: float = 0.3, max_wait_s: float = 5.0):
    """Hold back what is printed to ``sys.stderr`` while Orbax reads a checkpoint.

    When a read fails, Orbax closes its event loop while TensorStore reads are still in
    flight; as they finish, their callbacks print "Event loop is closed" tracebacks (dozens)
    to ``sys.stderr``. After a failure this waits until nothing more has been printed for
    ``settle_s`` (at most ``max_wait_s``) and drops the output; the caller reports the
    failure in one line. After a success the held-back text (normally none) is printed.
    """
    held, previous = io.StringIO(), sys.stderr
    sys.stderr = held
    try:
        yield
    except BaseException:
        _drop_orbax_unraisables()
        deadline, size, quiet_since = time.time() + max_wait_s, -1, time.time()
        while time.time() < deadline:
            if held.tell() != size:
                size, quiet_since = held.tell(), time.time()
            elif time.time() - quiet_since >= settle_s:
                break
            time.sleep(0.05)
        sys.stderr = previous
        raise
    sys.stderr = previous
    if held.getvalue():
        previous.write(held.getvalue())
