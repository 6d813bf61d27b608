"""Errors the trainer reports to users (the CLI prints them in one paragraph, exit code 2)."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, not enough memory or devices); the message says why."""
