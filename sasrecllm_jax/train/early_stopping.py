"""When a phase stops, and which of its evaluations it hands on: the best valid AUC so far, and a count of
evaluations without improvement against the patience. Saved with the latest checkpoint, so a resumed
phase stops where an uninterrupted one would. An evaluation whose AUC or log-loss is not finite (NaN
scores, a diverging model) is never the best: it counts as one without improvement."""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class EarlyStopping:
    patience: int
    best_auc: float = -1.0
    best_step: int = -1                # the step of the best evaluation (-1: none yet)
    bad_evals: int = 0                 # evaluations since the best one
    evals: int = 0
    best_metrics: dict | None = None   # the best evaluation's metrics (all / warm / cold)

    @staticmethod
    def finite(metrics: dict) -> bool:
        """Whether an evaluation's AUC (None: one label only, allowed) and log-loss over all rows are finite."""
        every = metrics.get("all", {})
        return all(v is None or _finite_number(v) for v in (every.get("auc"), every.get("logloss")))

    def update(self, step: int, auc: float | None, metrics: dict) -> bool:
        """Record an evaluation; True when it is the best so far (a None AUC counts as 0; an evaluation
        with non-finite metrics never is)."""
        auc = 0.0 if auc is None else auc
        self.evals += 1
        if self.finite(metrics) and auc > self.best_auc:
            self.best_auc, self.best_step, self.bad_evals, self.best_metrics = auc, step, 0, metrics
            return True
        self.bad_evals += 1
        return False

    @property
    def exhausted(self) -> bool:
        """Patience used up: `patience` evaluations in a row without improvement."""
        return self.bad_evals >= self.patience

    def state(self) -> dict:
        out = {"best_auc": self.best_auc, "best_step": self.best_step, "bad_evals": self.bad_evals,
               "evals": self.evals}
        return out if self.best_metrics is None else {**out, "best_metrics": self.best_metrics}

    @staticmethod
    def from_state(state: dict, patience: int) -> "EarlyStopping":
        return EarlyStopping(patience, state["best_auc"], state["best_step"], state["bad_evals"], state["evals"],
                             state.get("best_metrics"))


def _finite_number(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
