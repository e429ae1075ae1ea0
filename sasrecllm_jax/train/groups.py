"""What trains: every parameter leaf belongs to exactly one group, and trees split and merge by group.

    lora     any leaf under a `lora` subtree (inside llm)
    frozen   the LLM's base weights
    sasrec   the SASRec encoder          mf       the MF encoder
    mapper   the mapper MLP
    counts   any leaf under a `counts` subtree: counted terms (method pop, SASRec's bias counts, the
             mapper's item_seen flags), which no phase lists, so they never train

A phase lists the groups it trains; the train step differentiates only their leaves, the optimizer
gets one transform per group present (optax.multi_transform over these labels), and everything else
is a closed-over constant. This module also knows which top-level modules each prompt kind reads and
which groups may train on it.
"""
from __future__ import annotations

from typing import Callable

import jax

from sasrecllm_jax.errors import PartitionError
from sasrecllm_jax.models.pop import COUNTS
from sasrecllm_jax.trees import merge

ENCODERS = ("sasrec", "mf")
TRAINABLE = ("sasrec", "mf", "mapper", "lora")   # the groups a phase may list
GROUPS = ("sasrec", "mf", "counts", "mapper", "lora", "frozen")
ID_GROUPS = ("sasrec", "mf", "counts")  # the groups that hold rows indexed by the dataset's user and item ids
RULES: tuple[tuple[str, Callable[[tuple[str, ...]], bool]], ...] = (
    ("lora", lambda p: p[0] == "llm" and "lora" in p),
    ("frozen", lambda p: p[0] == "llm" and "lora" not in p),
    ("counts", lambda p: COUNTS in p),
    ("sasrec", lambda p: p[0] == "sasrec" and COUNTS not in p),
    ("mf", lambda p: p[0] == "mf"),
    ("mapper", lambda p: p[0] == "mapper" and COUNTS not in p),
)

__all__ = ["ENCODERS", "GROUPS", "TRAINABLE", "count", "frozen_groups", "group_trees", "labels", "merge",
           "present_groups", "prompt_modules", "replace_groups", "select", "split", "trainable_on"]


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def labels(params) -> dict:
    """A tree of group names shaped like params; a leaf claimed by no rule or by two is an error."""
    def label(path, _):
        p = _keys(path)
        hits = [g for g, rule in RULES if rule(p)]
        if len(hits) != 1:
            raise PartitionError(f"parameter {'/'.join(p)} is claimed by {hits or 'no rule'}; every leaf "
                                 f"needs exactly one group of {GROUPS}")
        return hits[0]
    return jax.tree_util.tree_map_with_path(label, params)


def split(params, groups) -> tuple[dict, dict]:
    """(leaves whose label is in groups, the other leaves), both as nested dicts without empty branches."""
    groups = set(groups)
    unknown = groups - set(GROUPS)
    if unknown:
        raise PartitionError(f"unknown group(s) {sorted(unknown)}; groups are {GROUPS}")
    lab = labels(params)
    return _select(params, lab, lambda g: g in groups), _select(params, lab, lambda g: g not in groups)


def _select(tree, lab, keep):
    if isinstance(tree, dict):
        out = {k: _select(tree[k], lab[k], keep) for k in tree}
        return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
    return tree if keep(lab) else {}


def present_groups(params) -> set[str]:
    return set(jax.tree_util.tree_leaves(labels(params)))


def count(params, groups=GROUPS) -> int:
    """Number of scalars in the given groups."""
    sel, _ = split(params, groups)
    return int(sum(x.size for x in jax.tree_util.tree_leaves(sel)))


def group_trees(params: dict) -> dict[str, dict]:
    """{group: its leaves} for every group present except the frozen LLM base (what checkpoints store)."""
    return {g: split(params, [g])[0] for g in sorted(present_groups(params) - {"frozen"})}


def replace_groups(params: dict, groups: dict[str, dict]) -> dict:
    """params with the leaves of each named group replaced by the given trees."""
    _, rest = split(params, list(groups))
    for tree in groups.values():
        rest = merge(rest, tree)
    return rest


def prompt_modules(prompt: str, encoder: str) -> set[str]:
    """The top-level modules a model of this prompt kind reads."""
    return {"none": {encoder}, "text": {"llm"}, "hybrid": {encoder, "mapper", "llm"}}[prompt]


def select(params: dict, modules: set) -> dict:
    """The top-level modules of `params` in `modules` (a phase hands the others on untouched)."""
    return {k: v for k, v in params.items() if k in modules}


def trainable_on(prompt: str, encoder: str) -> set[str]:
    """The groups that can train on a prompt kind."""
    return {"none": {encoder}, "text": {"lora"}, "hybrid": {encoder, "mapper", "lora"}}[prompt]


def frozen_groups(trainable) -> tuple[str, ...]:
    """The trainable-kind groups a phase does not train: they run deterministically (no dropout)."""
    return tuple(g for g in TRAINABLE if g not in trainable)
