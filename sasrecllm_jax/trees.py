"""Small utilities on parameter trees (nested dicts of arrays)."""
from __future__ import annotations

from sasrecllm_jax.errors import PartitionError


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


def set_path(tree: dict, path: tuple, value) -> None:
    """tree[path[0]][path[1]]... = value, creating the dicts on the way."""
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value
