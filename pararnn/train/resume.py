"""Where a run starts: a fresh state, or the newest checkpoint of its workdir that reads back
and was trained with a compatible config.

Checkpoints are tried newest first. One that cannot be read back is moved aside (never
deleted) with a warning naming it and why, and the next older one is tried. A config that
differs in what is trained stops with :func:`~pararnn.train.workdir.mismatch_message`;
differences that only change how the run goes on are reported and kept. The learning-rate
schedule belongs to the run: it keeps the length the run started with (``schedule_steps``),
whatever ``train.steps`` says now.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

from .checkpoint import Checkpointer, UnreadableCheckpoint
from .config import Config, ConfigError
from .errors import TrainingError
from .workdir import PREVIOUS_DIR, config_differences, mismatch_message, split_differences


@dataclasses.dataclass
class ResumePoint:
    step: int
    meta: dict
    state: Any | None  # None: the run is already at or past train.steps (nothing to train)
    schedule_steps: int  # the learning-rate schedule's length, fixed when the run started


def schedule_steps_of(meta: dict) -> int:
    """The schedule length a checkpoint's run uses (older checkpoints: its train.steps)."""
    if "schedule_steps" in meta:
        return int(meta["schedule_steps"])
    return int(meta.get("config", {}).get("train", {}).get("steps", 0))


def find_resume_point(ckpt: Checkpointer, cfg: Config, workdir: str, abstract_state: Any,
                      say: Callable[[str], None]) -> ResumePoint | None:
    """The newest usable checkpoint of ``ckpt`` (None if there is none at all).

    ``abstract_state`` carries the target shardings. Raises ConfigError when the newest
    readable checkpoint was trained with an incompatible config, TrainingError when no
    checkpoint reads back (those are then left where they are)."""
    steps = ckpt.steps()
    if not steps:
        return None
    bad: list[UnreadableCheckpoint] = []
    point = None
    for step in reversed(steps):
        try:
            meta = ckpt.read_meta(step)
            blocking, _ = split_differences(config_differences(meta.get("config", {}), cfg))
            if blocking:
                raise ConfigError(mismatch_message(workdir, step, blocking))
            state, meta = ckpt.restore(step, abstract_state)  # read fully, also when nothing is left to do
        except UnreadableCheckpoint as e:
            bad.append(e)
            continue
        if step >= cfg.train.steps:  # nothing to train: the state is not needed
            state = None
        point = ResumePoint(step, meta, state, schedule_steps_of(meta))
        break
    if point is None:
        listing = "; ".join(f"step {e.step}: {e.reason}" for e in bad)
        raise TrainingError(
            f"no checkpoint in {ckpt.directory} can be read back ({listing}). They were left in place. "
            f"Start afresh with --set train.resume=false (moves them to "
            f"{os.path.join(workdir, PREVIOUS_DIR)}/<time>/) or use another --workdir.")
    for e in bad:
        moved = ckpt.set_aside(e.step)
        say(f"warning: checkpoint step {e.step} cannot be read back ({e.reason}); moved it to {moved} "
            f"(kept for inspection, not deleted). Resuming from step {point.step}, the newest checkpoint "
            f"that reads back.")
    return point


def report_changes(point: ResumePoint, cfg: Config, say: Callable[[str], None]) -> None:
    """Say what changed since the stored run (allowed changes only; others never get here)."""
    _, allowed = split_differences(config_differences(point.meta.get("config", {}), cfg))
    others = [d for d in allowed if d.key != "train.steps"]
    if others:
        say("resuming with changed settings (allowed: they do not change what is trained): "
            + "; ".join(d.describe() for d in others) + ".")
    steps, planned = cfg.train.steps, point.schedule_steps
    if steps != planned and any(d.key == "train.steps" for d in allowed) and steps > point.step:
        after = ("holds the final learning rate after that" if steps > planned
                 else "is cut off where the run stops, as with train.stop_after")
        say(f"warning: train.steps is {steps} now, {planned} when this run started: training continues "
            f"to step {steps}, while the learning-rate schedule keeps its {planned} steps (warmup "
            f"{cfg.optim.warmup_steps}, cosine decay to lr·min_lr_ratio = {cfg.optim.lr * cfg.optim.min_lr_ratio:g} "
            f"at step {planned}) and {after}. To plan a new schedule, start a new run "
            f"(--workdir DIR, or --set train.resume=false).")


def nothing_to_do_message(workdir: str, point: ResumePoint, cfg: Config) -> str:
    return (f"nothing to do: {workdir!r} already holds step {point.step} and train.steps={cfg.train.steps}. "
            f"To train further, raise train.steps (e.g. --steps {2 * point.step}; the learning-rate schedule "
            f"keeps its {point.schedule_steps} steps), or start a new run with --workdir DIR.")
