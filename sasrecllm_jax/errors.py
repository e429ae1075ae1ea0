"""Every error a user can act on, and the one wrapper that prints them as one line at the command line.

Each message names what is wrong (the file, row, key or checkpoint) and says what to do. The
command-line entry points run through `run_command`: a `UserError` or an `OSError` (a folder that is
not writable, a full disk, a file where a folder should be) becomes `error: ...` on stderr and exit
status 2, an interrupt (Ctrl-C, SIGTERM, or a deadline's `timeout -s INT`) one line and status 130.

A command that trains asks for `graceful` interrupts: the first Ctrl-C only sets a flag, which the
training loop reads at its safe points (`check_stop()`: between steps, evaluation batches and phases),
so that no interrupt lands inside a compilation, a checkpoint write or a library callback; a second
Ctrl-C stops the process at once (os._exit: checkpoints are written to a temporary name and renamed, so
the last one stays whole, and the run's lock is freed with the process).
"""
from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
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


class DamagedCheckpointError(CheckpointError):
    """A checkpoint that fails its own check (its digests, its metadata, or finite values): another
    checkpoint may stand in for it, where one that verifies holds the same state."""


class PartitionError(UserError, ValueError):
    """A parameter that no group, or more than one, claims."""


class TrainingError(UserError, RuntimeError):
    """Training cannot go on (a non-finite loss, a run folder in use...)."""


class _Stop:
    """Whether an interrupt asked the running command to stop at its next safe point, and the line a
    second interrupt prints as it stops the process at once."""
    requested = False
    message = "stopped: interrupted"


def check_stop() -> None:
    """Raise KeyboardInterrupt here if an interrupt is pending (a safe point of a graceful command)."""
    if _Stop.requested:
        raise KeyboardInterrupt


def _ask_to_stop(signum, frame) -> None:
    if _Stop.requested:  # the second interrupt: at once, without unwinding through library code
        print(_Stop.message, file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(130)
    _Stop.requested = True
    print(f"\n{signal.Signals(signum).name}: stopping at the next step (interrupt again to stop at once)",
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def _graceful_interrupts(message: str):
    """SIGINT and SIGTERM set the stop flag while the body runs (main thread only); handlers restored after."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        yield
        return
    _Stop.requested, _Stop.message = False, message
    before = {s: signal.signal(s, _ask_to_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        _Stop.requested = False


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
_IN_THE_WAY = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR}


def describe_os_error(e: OSError) -> str:
    """An operating-system error as one line: the path, what went wrong, what to do."""
    path = e.filename if e.filename is not None else "a file"
    reason = e.strerror or str(e)
    if e.errno in _DISK_FULL:
        advice = "the disk is full or a file-size limit was reached: free space or choose another folder"
    elif e.errno in _NOT_WRITABLE:
        advice = "it is not writable: fix its permissions or choose another folder"
    elif e.errno in _IN_THE_WAY:
        advice = "a file or folder is in the way: move it or choose another path"
    elif e.errno == errno.ENOENT:
        advice = "it does not exist: check the path"
    else:
        advice = "check the path and the disk"
    return f"cannot use {path}: {reason}; {advice}"


def run_command(body: Callable[[], int | None], interrupted: str = "stopped: interrupted",
                graceful: bool = False, os_error_hint: Callable[[], str] | None = None) -> int:
    """Run a command's body; its user errors, operating-system errors and interrupts become one line
    and an exit status. `graceful`: see the module's docstring. `os_error_hint()` ends an OSError's line."""
    try:
        with _graceful_interrupts(interrupted) if graceful else contextlib.nullcontext():
            return body() or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {describe_os_error(e)}{os_error_hint() if os_error_hint else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
