"""Every error a user can act on, and the one wrapper that prints them as one line at the command line.

Each message names what is wrong (the file, row, key or checkpoint) and says what to do. The
command-line entry points run through `run_command`: a `UserError` becomes `error: ...` on stderr and
exit status 2, an interrupt (Ctrl-C, or a deadline's `timeout -s INT`) one line and status 130.
"""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """An error the user can fix; its message says how. Never shown with a traceback."""


class ConfigError(UserError, ValueError):
    """A bad configuration: the message names the file or flag, the key and the fix. `key` (dotted, e.g.
    train.batch_size) lets the loader name where a value came from: the YAML file or a --set flag."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class DataError(UserError, ValueError):
    """Bad input data: the message names the file (and row) and says what to do."""


class WeightsError(UserError, ValueError):
    """Weights that do not fit the model: names the key, the shapes and what to do."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used (missing, damaged, or written for another model)."""


class PartitionError(UserError, ValueError):
    """A parameter that no group, or more than one, claims."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (a non-finite loss, a run folder in use...)."""


def run_command(body: Callable[[], int | None], interrupted: str = "stopped: interrupted") -> int:
    """Run a command's body; its user errors and interrupts become one line and an exit status."""
    try:
        return body() or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
