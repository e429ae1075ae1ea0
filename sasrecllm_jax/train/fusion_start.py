"""`model.mapper.fusion_start: late_fusion`: a residual hybrid (score = ID score + a x LLM log-odds) whose
llm_gate a (with `llm_gates: known_unknown` also llm_gate_unknown, fitted apart on the rows whose item is
shown as unknown; with `unknown_only` llm_gate_unknown alone, the other rows' weight held at 0), and with `unknown_id_score: learned` or `offset` its unknown_score, are fitted when the phase
that first trains the mapper starts: the late fusion of the hybrid's own two terms, each scored on that phase's
validation rows by the params the phase starts from, picked on those rows (sasrecllm_jax.fusion). The
phase then starts at that fusion's ranking, and its evaluation at step 0 measures it.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from sasrecllm_jax.config import Config
from sasrecllm_jax.data.pipeline import SplitData
from sasrecllm_jax.evaluate import Scorer, id_terms, score_split
from sasrecllm_jax.fusion import fit_late_fusion
from sasrecllm_jax.metrics import auc
from sasrecllm_jax.models.hybrid import Hybrid
from sasrecllm_jax.trees import set_path

# fusion weights 0.05, ..., 0.95: both terms count (at 1 the ID score drops out, which a residual cannot
# express; at 0 the LLM term does, and with llm_gate 0 the mapper would get no gradient). With two gates the
# known items' may go to 0: the unknown items' rows still pass the mapper its gradient.
WEIGHTS = np.linspace(0.0, 1.0, 21)[1:-1]


def llm_term_model(model: Hybrid) -> Hybrid:
    """The same hybrid scoring with its LLM alone: the residual's second term (its fusion numbers unused)."""
    return model.clone(cfg=dataclasses.replace(model.cfg, mapper=dataclasses.replace(model.cfg.mapper, fusion="none")))


def fit_start(cfg: Config, model: Hybrid, params: dict, data: SplitData, llm_scorer: Scorer,
              progress=None) -> tuple[dict, dict]:
    """(the values to set, {"llm_gate": a[, "llm_gate_unknown": a'][, "unknown_score": u]}, and what the fit
    found) for a residual
    hybrid `model` (deterministic) with `params` (the groups its hybrid prompts read) on validation rows
    `data` rendered as hybrid prompts; `llm_scorer` scores llm_term_model(model)."""
    kind = cfg.model.mapper.unknown_id_score
    id_score, known = id_terms(model, params, data)
    llm = score_split(llm_scorer, params, data, cfg.train.eval_batch_size, cfg.data.pad_multiple, True, "on",
                      progress, cfg.eval.share_prefix)
    both = 0 < (~known).sum() < len(known)
    new = ~known if kind != "encoder" and both else None
    # (every row new or none: no number to place them by; unknown_score: the mean (learned), 0 (offset))
    split, hold = cfg.model.mapper.llm_gates != "one", cfg.model.mapper.llm_gates == "unknown_only"
    f = fit_late_fusion(data.label, id_score, llm, new if kind == "learned" else None, weights=WEIGHTS,
                        ref_a=id_score[~new] if new is not None else None, offset=new if kind == "offset" else None,
                        gate_rows=~known if split and both else None, hold_gate=hold and both)
    values = {} if hold else {"llm_gate": float(f["gate_b"])}
    if split:  # (rows of one kind only: both gates get the one fitted weight)
        values["llm_gate_unknown"] = float(f["gate_b_rows"]) if both else float(f["gate_b"])
    valid_auc = f["valid_auc"]
    if hold and not (~known).any():  # every row known: the start is the ID score alone, whatever the fit
        valid_auc = auc(data.label, id_score)
    if kind == "learned":
        values["unknown_score"] = float(f["abstain_score"]) if new is not None else float(id_score.mean())
    if kind == "offset":  # the ID score of those rows already holds the current offset: the fit adds to it
        values["unknown_score"] = float(params["mapper"]["unknown_score"]) + (float(f["offset_score"]) if new is not None else 0.0)
    return values, {"weight": f["weight_b"], "valid_auc": valid_auc, "rows": len(data),
                    "new_rows": int(new.sum()) if new is not None else 0, "kind": kind, "at_edge": f["c_at_edge"],
                    "split": "gate_b_rows" in f, "held": hold}


def with_values(tree: dict, values: dict) -> dict:
    """tree (a params or trainable tree holding the mapper) with mapper/NAME set to each value."""
    out = jax.tree_util.tree_map(lambda x: x, tree)
    for name, value in values.items():
        old = out["mapper"][name]
        set_path(out, ("mapper", name), np.asarray(value, np.asarray(old).dtype))
    return out
