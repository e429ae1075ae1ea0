"""What a phase prints while it trains: a progress bar with the loss, learning rate and samples per
second, and one line per evaluation. Lines go through the bar, so they never tear it."""
from __future__ import annotations

from tqdm.auto import tqdm


class PhaseProgress:
    def __init__(self, phase: str, total: int, done: int):
        self.phase = phase
        self.bar = tqdm(total=total, initial=done, desc=phase, unit="step", dynamic_ncols=True)

    def step(self) -> None:
        self.bar.update(1)

    def train_record(self, values: dict) -> None:
        lr = max(v for k, v in values.items() if k.startswith("lr/"))
        self.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{values['samples_per_s']:.0f}")

    def say(self, text: str) -> None:
        self.bar.write(f"[{self.phase}] {text}")

    def evaluation(self, step: int, auc: float, best_auc: float, best_step: int) -> None:
        self.say(f"step {step}: valid AUC {auc:.4f} (best {best_auc:.4f} at step {best_step})")

    def close(self) -> None:
        self.bar.close()
