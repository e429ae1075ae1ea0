"""metrics.jsonl (one JSON record per line: time, kind, phase, step, values) and its TensorBoard copy."""
from __future__ import annotations

import json
import time
from pathlib import Path

from tensorboardX import SummaryWriter


class Reporter:
    def __init__(self, workdir: Path):
        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def log(self, kind: str, phase: str, step: int, values: dict) -> None:
        flat = {k: float(v) for k, v in _flatten(values).items() if v is not None}
        self._file.write(json.dumps({"time": time.time(), "kind": kind, "phase": phase, "step": step, **flat}) + "\n")
        self._file.flush()
        for k, v in flat.items():
            self._tb.add_scalar(f"{phase}/{kind}/{k}", v, step)

    def close(self) -> None:
        self._file.close()
        self._tb.close()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) or hasattr(v, "item"):
            out[f"{prefix}{k}"] = v
    return out


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
