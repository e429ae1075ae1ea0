"""The parameter partition: every leaf gets exactly one group label; trees split and merge by label.

    lora     any leaf under a `lora` subtree (inside llm)
    sasrec   the SASRec encoder          mf       the MF encoder
    pop      counted tendencies (method pop's params; SASRec's user_count / item_count): never trained
    mapper   the mapper MLP               frozen   the LLM's base weights

A phase trains some groups: gradients are taken with respect to their leaves only, and the
rest is a closed-over constant.
"""
from __future__ import annotations

from typing import Callable

import jax

from sasrecllm_jax.models.pop import COUNT_TERMS


def _counted(p: tuple[str, ...]) -> bool:
    return p[0] == "sasrec" and len(p) > 1 and p[1] in COUNT_TERMS


GROUPS = ("sasrec", "mf", "pop", "mapper", "lora", "frozen")
RULES: tuple[tuple[str, Callable[[tuple[str, ...]], bool]], ...] = (
    ("lora", lambda p: p[0] == "llm" and "lora" in p),
    ("frozen", lambda p: p[0] == "llm" and "lora" not in p),
    ("sasrec", lambda p: p[0] == "sasrec" and not _counted(p)),
    ("mf", lambda p: p[0] == "mf"),
    ("pop", lambda p: p[0] == "pop" or _counted(p)),
    ("mapper", lambda p: p[0] == "mapper"),
)


class PartitionError(ValueError):
    pass


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


def merge(a: dict, b: dict) -> dict:
    """Union of two disjoint trees; a leaf present in both is an error."""
    out = dict(a)
    for k, v in b.items():
        if k in out:
            if not (isinstance(out[k], dict) and isinstance(v, dict)):
                raise PartitionError(f"leaf {k} is in both trees")
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def present_groups(params) -> set[str]:
    return set(jax.tree_util.tree_leaves(labels(params)))


def count(params, groups=GROUPS) -> int:
    sel, _ = split(params, groups)
    return int(sum(x.size for x in jax.tree_util.tree_leaves(sel)))
