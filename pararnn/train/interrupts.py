"""SIGINT (Ctrl-C) and SIGTERM (preemption) during training: finish the step, save, exit.

Inside :class:`Interrupts`, the first SIGINT or SIGTERM only sets :attr:`Interrupts.received`;
the training loop checks it after every step, saves a checkpoint and stops. The CLI then exits
with 128 + the signal number — 130 for SIGINT, 143 for SIGTERM — so a shell or a scheduler can
tell an interrupted run from a finished one (exit 0). A second Ctrl-C while the checkpoint is
being written stops at once (KeyboardInterrupt) without waiting for it.
"""

from __future__ import annotations

import signal

EXIT_CODES = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}  # 130, 143


class Interrupts:
    def __init__(self):
        self.received: str | None = None  # "SIGINT" / "SIGTERM" once one arrived
        self._previous: dict = {}

    def __enter__(self) -> "Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever handles them
                pass
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = self.received or name

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
