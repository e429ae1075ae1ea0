"""`model.mapper.new_items: text`: the title-predicted item vectors (sasrecllm_jax/item_text.py) are fitted
when the run's first phase that reads hybrid prompts starts, from the encoder it starts with, and set as the
mapper's counted `item_text` table. A resumed phase fits them again from the same encoder: the same table.
"""
from __future__ import annotations

import jax
import numpy as np

from sasrecllm_jax.data.pipeline import SplitData
from sasrecllm_jax.evaluate import id_rows
from sasrecllm_jax.item_text import fit_item_vectors, title_features
from sasrecllm_jax.models.hybrid import Hybrid
from sasrecllm_jax.models.pop import COUNTS
from sasrecllm_jax.trees import set_path

TABLE = ("mapper", COUNTS, "item_text")


def fit_table(model: Hybrid, params: dict, data: SplitData, titles, tokenizer) -> tuple[np.ndarray, dict]:
    """(the item_text table, what the fit found) for the hybrid `model` with `params` (encoder, mapper counts
    and the LLM's input embeddings), its ridge strength picked on validation rows `data`."""
    users, = id_rows(model, Hybrid.user_vectors, params, data)
    terms, = id_rows(model, Hybrid.encoder_terms, params, data)
    items = jax.device_get(jax.jit(lambda p: model.apply({"params": p}, method=Hybrid.item_vectors))(params))
    seen = np.asarray(jax.device_get(params["mapper"][COUNTS]["item_seen"])) > 0
    features = title_features(tokenizer, params["llm"]["model"]["embed_tokens"]["embedding"], titles)
    table, found = fit_item_vectors(features, items, seen, users, data.iid, data.label,
                                    terms=np.asarray(terms, np.float64))
    return table, {**found, "new_items": int((~seen[1:]).sum())}


def with_table(tree: dict, table: np.ndarray) -> dict:
    """tree (a params or frozen tree holding the mapper's counts) with item_text set to table."""
    out = jax.tree_util.tree_map(lambda x: x, tree)
    set_path(out, TABLE, np.asarray(table, out["mapper"][COUNTS]["item_text"].dtype))
    return out
