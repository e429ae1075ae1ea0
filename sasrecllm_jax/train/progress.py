"""What a phase prints while it trains: a progress bar with the loss, the learning rate, samples per
second (with prompts: real tokens per second and padding's share of the batches) and the time left; a
line when a new batch shape compiles (and how long it took); a bar for every evaluation; one line per
evaluation's result. Lines go through the bar, so they never tear it."""
from __future__ import annotations

import math

from tqdm.auto import tqdm


def two_digits(x: float) -> str:
    """A rate to two significant digits, without an exponent: 0.34, 2.2, 15, 2200."""
    if not math.isfinite(x) or x <= 0:
        return "0"
    rounded = float(f"{x:.2g}")
    return f"{rounded:.{max(0, 1 - math.floor(math.log10(rounded)))}f}"


def row_bar(rows: int, desc: str, leave: bool = True) -> tqdm:
    """A bar over the rows of one evaluation pass (use it as a context manager, or close it)."""
    return tqdm(total=rows, desc=desc, unit="row", leave=leave, dynamic_ncols=True)


class PhaseProgress:
    def __init__(self, phase: str, total: int, done: int):
        self.phase = phase
        self.bar = tqdm(total=total, initial=done, desc=phase, unit="step", dynamic_ncols=True)

    def step(self) -> None:
        self.bar.update(1)

    def train_record(self, values: dict) -> None:
        lr = max(v for k, v in values.items() if k.startswith("lr/"))
        tokens = {"tok/s": two_digits(values["tokens_per_s"]), "pad": f"{values['padding_share']:.0%}"} \
            if "tokens_per_s" in values else {}
        self.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", sps=two_digits(values["samples_per_s"]),
                             **tokens)

    def say(self, text: str) -> None:
        self.bar.write(f"[{self.phase}] {text}")

    def evaluation_bar(self, rows: int, split: str) -> tqdm:
        """A bar for one evaluation pass (it goes away when the pass ends)."""
        return row_bar(rows, f"{self.phase}: evaluate {split}", leave=False)

    def evaluation(self, step: int, auc: float, best_auc: float, best_step: int) -> None:
        self.say(f"step {step}: valid AUC {auc:.4f} (best {best_auc:.4f} at step {best_step})")

    def close(self) -> None:
        self.bar.close()
