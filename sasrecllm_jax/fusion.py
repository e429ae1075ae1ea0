"""Late fusion of two scorers, fitted on validation rows: the control a hybrid is compared with, and the
start of a residual hybrid (`model.mapper.fusion_start: late_fusion`).

    fused = (1 - w) z_a + w z_b,    z = (score - mean) / deviation, both taken on the validation rows

w in [0, 1] is the first of `grid` evenly spaced values with the best validation AUC. With `abstain` (a
row mask), a abstains on those rows: z_a there is one constant c, picked on validation with w, so among
them the rows rank by b alone and c places them against the rest. The same ranking, in a's and b's own
units, is a + gate x b with a's score on abstaining rows mean + c x deviation: a residual hybrid's
llm_gate and unknown_score. With `offset` (a row mask) instead, z_a + c on those rows: a still ranks
them, and c (c x deviation in a's units) places them against the rest.
"""
from __future__ import annotations

import numpy as np

from sasrecllm_jax.metrics import auc

ABSTAIN_GRID = np.round(np.linspace(-5.0, 5.0, 101), 2)  # a's stand-in on abstaining rows, in a's z units


def unit(ref: np.ndarray):
    """ref's deviation, or 1 for a constant ref."""
    return ref.std() or 1.0


def standardiser(ref: np.ndarray):
    """z(scores): scores in units of ref's mean and deviation."""
    return lambda s: (s - ref.mean()) / unit(ref)


def fit_late_fusion(label: np.ndarray, a: np.ndarray, b: np.ndarray, abstain: np.ndarray | None = None,
                    grid: int = 21, ref_a: np.ndarray | None = None, weights: np.ndarray | None = None,
                    offset: np.ndarray | None = None) -> dict:
    """The late fusion of scorers a and b fitted on validation rows (labels `label`): weight_b (w), with
    `abstain` abstain_c (c) and abstain_score (a's score there in its own units), with `offset` offset_c
    and offset_score (the same; c_at_edge: c is at an end of ABSTAIN_GRID, which may clip it), gate_b (None
    when w = 1: the fusion drops a), the validation AUC, and
    `fuse(a, b, rows)`, which applies it to other rows (rows: their abstain or offset mask).
    a is standardised by `ref_a` (default: a itself), b by b; `weights` replaces the grid of w."""
    if abstain is not None and offset is not None:
        raise ValueError("a fusion either abstains on rows or offsets them, not both")
    ref = a if ref_a is None else ref_a
    za_of, zb_of = standardiser(ref), standardiser(b)
    za, zb = za_of(a), zb_of(b)
    rows = abstain if abstain is not None else offset
    cs = ABSTAIN_GRID if rows is not None else [None]

    def mix(w, c, za, zb, new):
        if c is None:
            part = za
        elif new is None:
            raise ValueError("this fusion was fitted with rows that abstain or are offset: pass new= (a boolean "
                             "per row, which rows those are)")
        else:
            part = za + c * new if offset is not None else np.where(new, c, za)
        return (1 - w) * part + w * zb
    ws = np.linspace(0.0, 1.0, grid) if weights is None else weights
    choices = [(float(w), c) for w in ws for c in cs]
    scores = [auc(label, mix(w, c, za, zb, rows)) for w, c in choices]
    w, c = choices[int(np.argmax(scores))]
    out = {"weight_b": w, "valid_auc": float(max(scores)), "c_at_edge": c is not None and abs(c) >= ABSTAIN_GRID.max(),
           "gate_b": w / (1 - w) * unit(ref) / unit(b) if w < 1 else None,
           "fuse": lambda a2, b2, new=None: mix(w, c, za_of(a2), zb_of(b2), new)}
    if abstain is not None:
        out.update(abstain_c=float(c), abstain_score=float(ref.mean() + c * unit(ref)))
    if offset is not None:
        out.update(offset_c=float(c), offset_score=float(c * unit(ref)))
    return out
