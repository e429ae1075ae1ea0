"""metrics.jsonl (one JSON record per line: time, kind, phase, step, values) and its TensorBoard copy.

A resumed run first forgets what it will do again (`Reporter.forget`): the records of the resumed phase
after the checkpoint it continues from, and of the phases and final evaluation not done yet. So a run's
metrics.jsonl holds each (kind, phase, step) once, however often it was stopped and resumed.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2
from tensorboardX.summary import scalar

from sasrecllm_jax.run_folder.files import write_whole

PHASE_KINDS = ("train", "eval", "timing")  # a phase's records, which a process writes again when it redoes its steps


class Reporter:
    def __init__(self, workdir: Path):
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._open()
        self._tb = TensorBoard(Path(workdir) / "tensorboard")

    def _open(self):
        """metrics.jsonl for appending, after a newline if a kill left its last line without one."""
        try:
            f = open(self.path, "a+")
            if f.tell() > 0:
                f.seek(f.tell() - 1)
                if f.read(1) != "\n":
                    f.write("\n")
            return f
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def log(self, kind: str, phase: str, step: int, values: dict) -> None:
        flat = {k: float(v) for k, v in _flatten(values).items() if v is not None}
        try:
            self._file.write(json.dumps({"time": time.time(), "kind": kind, "phase": phase, "step": step, **flat}) + "\n")
            self._file.flush()
        except OSError as e:  # (a write error names no file)
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self._tb.scalars({f"{phase}/{kind}/{k}": v for k, v in flat.items() if math.isfinite(v)}, step,
                         flush=kind != "train")  # (NaN stays in metrics.jsonl; TensorBoard would warn about it)

    def forget(self, phase: str, after_step: int = -1) -> int:
        """Drop a phase's train and eval records after `after_step` (-1: all of them) and its timing
        records, which the resumed process writes again; returns how many lines were dropped."""
        return self._keep(lambda r: not (r.get("phase") == phase and r.get("kind") in PHASE_KINDS
                                         and (r.get("step", 0) > after_step or r.get("kind") == "timing")))

    def forget_final(self) -> int:
        """Drop the final evaluation's records (a resumed run makes them again)."""
        return self._keep(lambda r: r.get("kind") != "final")

    def _keep(self, keep) -> int:
        """Rewrite metrics.jsonl (whole or not at all) with the records `keep` accepts, and without a line
        that a kill cut short; returns how many lines went."""
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [r for r in map(_parse, lines) if r is not None and keep(r)]
        if len(kept) == len(lines):
            return 0
        self._file.close()
        write_whole(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = self._open()
        return len(lines) - len(kept)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._tb.close()


class TensorBoard:
    """RUN/tensorboard/: scalars in TensorBoard's event format, written by the calling thread.
    (tensorboardX's SummaryWriter writes from a thread of its own, which dies silently when the disk is
    full, after which the run blocks on its full queue; here a failed write is an OSError naming the file.)"""

    def __init__(self, folder: Path):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._writer = EventsWriter(str(folder / "events"))
        except OSError as e:
            raise OSError(e.errno, e.strerror, e.filename or str(folder)) from None
        self.path = Path(self._writer._file_name)

    def scalars(self, values: dict[str, float], step: int, flush: bool = False) -> None:
        try:
            for tag, value in values.items():
                self._writer.write_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                                         summary=scalar(tag, value)))
            if flush:
                self._writer.flush()
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def close(self) -> None:
        try:
            self._writer.close()
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(self.path)) from None


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) or hasattr(v, "item"):
            out[f"{prefix}{k}"] = v
    return out


def read_metrics(run: Path) -> list[dict]:
    """Every record of RUN/metrics.jsonl (a last line cut short by a kill is skipped)."""
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(_parse, path.read_text().splitlines()) if r is not None]


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
