"""Late fusion of two scorers, fitted on validation rows: the control a hybrid is compared with, and the
start of a residual hybrid (`model.mapper.fusion_start: late_fusion`).

    fused = (1 - w) z_a + w z_b,    z = (score - mean) / deviation, both taken on the validation rows

w in [0, 1] is the first of `grid` evenly spaced values with the best validation AUC. With `abstain` (a
row mask), a abstains on those rows: z_a there is one constant c, picked on validation with w, so among
them the rows rank by b alone and c places them against the rest. The same ranking, in a's and b's own
units, is a + gate x b with a's score on abstaining rows mean + c x deviation: a residual hybrid's
llm_gate and unknown_score. With `offset` (a row mask) instead, z_a + c on those rows: a still ranks
them, and c (c x deviation in a's units) places them against the rest.

With `gate_rows` (a row mask: with abstain or offset, those rows), b's weight may differ on those rows: in
a's units the fusion is z_a + g z_b on the other rows and (c or z_a + c) + g' z_b on them, g and g' (and c)
found by coordinate ascent from the shared fit (g = g' = w / (1 - w)), g over {0} and the grid's w / (1 - w)
for w strictly between 0 and 1, g' over those: b may drop out where a knows the item, never where it does
not. With `hold_gate`, g is held at 0 (the other rows rank as a does) and only g' (and c) are fitted.
gate_b and gate_b_rows are g and g' in the scorers' own units (a residual hybrid's llm_gate and
llm_gate_unknown); two gates move the two kinds of rows apart by their difference x b's mean, which
abstain_score or offset_score takes back. Without abstain or offset nothing could take it back, so there
z_b is b / its deviation, not centred.
"""
from __future__ import annotations

import numpy as np

from sasrecllm_jax.metrics import auc

ABSTAIN_GRID = np.round(np.linspace(-5.0, 5.0, 101), 2)  # a's stand-in on abstaining rows, in a's z units
SPLIT_ROUNDS = 5  # coordinate-ascent rounds of a split gate (each: g, then g' with c); it stops when none moves


def unit(ref: np.ndarray):
    """ref's deviation, or 1 for a constant ref."""
    return ref.std() or 1.0


def standardiser(ref: np.ndarray):
    """z(scores): scores in units of ref's mean and deviation."""
    return lambda s: (s - ref.mean()) / unit(ref)


def fit_late_fusion(label: np.ndarray, a: np.ndarray, b: np.ndarray, abstain: np.ndarray | None = None,
                    grid: int = 21, ref_a: np.ndarray | None = None, weights: np.ndarray | None = None,
                    offset: np.ndarray | None = None, gate_rows: np.ndarray | None = None,
                    hold_gate: bool = False) -> dict:
    """The late fusion of scorers a and b fitted on validation rows (labels `label`): weight_b (w), with
    `abstain` abstain_c (c) and abstain_score (a's score there in its own units), with `offset` offset_c
    and offset_score (the same; c_at_edge: c is at an end of ABSTAIN_GRID, which may clip it), gate_b (None
    when w = 1: the fusion drops a), the validation AUC, and
    `fuse(a, b, rows)`, which applies it to other rows (rows: their abstain or offset mask).
    a is standardised by `ref_a` (default: a itself), b by b; `weights` replaces the grid of w. With
    `gate_rows`, gate_b_rows (b's gate on those rows; gate_b is then the other rows', 0 with `hold_gate`),
    and `fuse` takes new= those rows."""
    if abstain is not None and offset is not None:
        raise ValueError("a fusion either abstains on rows or offsets them, not both")
    if hold_gate and gate_rows is None:
        raise ValueError("hold_gate holds b's gate at 0 on the rows outside gate_rows: pass gate_rows")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)  # (the grid search sums in float64)
    ref = a if ref_a is None else np.asarray(ref_a, np.float64)
    za_of, zb_of = standardiser(ref), standardiser(b)
    za, zb = za_of(a), zb_of(b)
    rows = abstain if abstain is not None else offset
    cs = ABSTAIN_GRID if rows is not None else [None]

    def mix(w, c, za, zb, new):
        if c is None:
            part = za
        else:
            part = za + c * _rows_of(new) if offset is not None else np.where(_rows_of(new), c, za)
        return (1 - w) * part + w * zb
    ws = np.linspace(0.0, 1.0, grid) if weights is None else weights
    choices = [(float(w), c) for w in ws for c in cs]
    if rows is None:
        scores = [auc(label, mix(w, None, za, zb, rows)) for w in ws]
    else:  # each w's scores at c = 0, its rows shifted by (1 - w) c for every c at once
        scores = np.concatenate([shifted_aucs(label, mix(w, 0.0, za, zb, rows), rows, (1 - w) * ABSTAIN_GRID) for w in ws])
    w, c = choices[int(np.argmax(scores))]
    out = {"weight_b": w, "valid_auc": auc(label, mix(w, c, za, zb, rows)),
           "c_at_edge": c is not None and abs(c) >= ABSTAIN_GRID.max(),
           "gate_b": w / (1 - w) * unit(ref) / unit(b) if w < 1 else None,
           "fuse": lambda a2, b2, new=None: mix(w, c, za_of(a2), zb_of(b2), new)}
    if gate_rows is not None:
        if (rows is not None and not np.array_equal(rows, gate_rows)) or w >= 1:
            raise ValueError("a split gate weighs b apart on the rows that abstain or are offset, if any, and "
                             "needs a grid of w below 1")
        gates = [x / (1 - x) for x in ws if 0 < x < 1]
        mode = "offset" if offset is not None else "abstain" if abstain is not None else None
        zs_of = zb_of if mode else (lambda s: s / unit(b))
        g, g_rows, c, valid = _split_gates(label, za, zs_of(b), gate_rows, mode, w / (1 - w), c, gates, hold_gate)
        gate, gate_rows_b = g * unit(ref) / unit(b), g_rows * unit(ref) / unit(b)
        shift = (gate - gate_rows_b) * b.mean() if mode else 0.0
        out.update(valid_auc=valid, c_at_edge=c is not None and abs(c) >= ABSTAIN_GRID.max(),
                   gate_b=gate, gate_b_rows=gate_rows_b,
                   fuse=lambda a2, b2, new=None: _split_mix(g, g_rows, c, za_of(a2), zs_of(b2), _rows_of(new), mode))
    else:
        shift = 0.0
    if abstain is not None:
        out.update(abstain_c=float(c), abstain_score=float(ref.mean() + c * unit(ref) + shift))
    if offset is not None:
        out.update(offset_c=float(c), offset_score=float(c * unit(ref) + shift))
    return out


def _rows_of(new):
    if new is None:
        raise ValueError("this fusion was fitted with rows that abstain or are offset: pass new= (a boolean "
                         "per row, which rows those are)")
    return new


def _split_mix(g, g_rows, c, za, zb, new, mode: str | None):
    """A split-gate fusion in a's units: z_a + g z_b; on the `new` rows z_a (mode None), c ("abstain") or
    z_a + c ("offset"), plus g_rows z_b."""
    base = za + c * new if mode == "offset" else np.where(new, c, za) if mode == "abstain" else za
    return base + np.where(new, g_rows, g) * zb


def _won(pos: np.ndarray, neg_sorted: np.ndarray) -> np.ndarray:
    """For each entry of pos (any shape), the negatives below it plus half those equal to it."""
    below = np.searchsorted(neg_sorted, pos, side="left")
    return below + 0.5 * (np.searchsorted(neg_sorted, pos, side="right") - below)


def shifted_aucs(label: np.ndarray, score: np.ndarray, rows: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """auc(label, score + shift x rows) for every shift, at once: the pairs within each kind of rows do not
    move, and the pairs across them are counted by binary search (ties count a half, as in auc)."""
    label, rows = np.asarray(label, bool), np.asarray(rows, bool)
    kinds = [(np.sort(score[~rows & ~label]), score[~rows & label]), (np.sort(score[rows & ~label]), score[rows & label])]
    n_pos, n_neg = label.sum(), (~label).sum()
    within = sum(_won(pos, neg).sum() for neg, pos in kinds)
    (neg_a, pos_a), (neg_b, pos_b) = kinds
    pos_a = np.sort(pos_a)
    shifts = np.asarray(shifts, np.float64)
    across = np.concatenate([  # 16 shifts at a time: [16, rows] arrays, not [len(shifts), rows]
        _won(pos_b[None] + s[:, None], neg_a).sum(1) + (len(neg_b) * len(pos_a) - _won(neg_b[None] + s[:, None], pos_a).sum(1))
        for s in np.array_split(shifts, max(1, -(-len(shifts) // 16)))])
    return (within + across) / (n_pos * n_neg)


def _split_gates(label, za, zb, new, mode: str | None, g0: float, c0, gates: list, hold: bool = False):
    """(g, g_rows, c, AUC): coordinate ascent from the shared fit (g0 = g_rows, c0; with `hold`, g = 0
    throughout), a move taken only when it raises the AUC; c over ABSTAIN_GRID for each g_rows at once
    (shifted_aucs)."""
    g, g_rows, c = (0.0 if hold else g0), g0, c0
    best = auc(label, _split_mix(g, g_rows, c, za, zb, new, mode))
    if hold and mode is not None:  # c of the shared fit placed rows that b also moved on the others: refit it
        scores = shifted_aucs(label, _split_mix(g, g_rows, 0.0, za, zb, new, mode), new, ABSTAIN_GRID)
        i = int(np.argmax(scores))
        c, best = float(ABSTAIN_GRID[i]), float(scores[i])
    for _ in range(SPLIT_ROUNDS):
        moved = False
        for cand in [] if hold else [0.0, *gates]:
            score = auc(label, _split_mix(cand, g_rows, c, za, zb, new, mode))
            if score > best:
                g, best, moved = cand, score, True
        for cand in gates:
            if mode is None:
                scores = np.array([auc(label, _split_mix(g, cand, None, za, zb, new, mode))])
            else:  # the rows' scores at c = 0, shifted by each c
                scores = shifted_aucs(label, _split_mix(g, cand, 0.0, za, zb, new, mode), new, ABSTAIN_GRID)
            i = int(np.argmax(scores))
            if scores[i] > best:
                g_rows, c, best, moved = cand, None if mode is None else float(ABSTAIN_GRID[i]), float(scores[i]), True
        if not moved:
            break
    return g, g_rows, c, float(auc(label, _split_mix(g, g_rows, c, za, zb, new, mode)))
