"""`model.mapper.new_items: text`: the title-predicted item vectors (sasrecllm_jax/item_text.py) are fitted
when the run's first phase that reads hybrid prompts starts, from the encoder it starts with, and set as the
mapper's counted `item_text` table. A resumed phase fits them again from the same encoder: the same table.
"""
from __future__ import annotations

import jax
import numpy as np

from sasrecllm_jax.config import Config
from sasrecllm_jax.data.pipeline import SplitData
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.item_text import fit_item_vectors, title_features
from sasrecllm_jax.models.hybrid import Hybrid
from sasrecllm_jax.models.pop import COUNTS
from sasrecllm_jax.train.fusion_start import id_rows
from sasrecllm_jax.train.groups import ENCODERS
from sasrecllm_jax.trees import set_path

TABLE = ("mapper", COUNTS, "item_text")


def fitting_phase(cfg: Config, phases) -> str | None:
    """The phase whose start fits the table (the first that reads hybrid prompts), or None without
    new_items: text. Refused when that phase or a later one trains the encoder, or a later one restores it:
    the table would stay fitted to an older encoder."""
    if cfg.model.mapper.new_items != "text":
        return None
    phases = list(phases)
    first = next((k for k, p in enumerate(phases) if p.prompt == "hybrid"), None)
    if first is None:
        return None
    later = phases[first:]
    moving = [p.name for p in later if set(p.trainable) & set(ENCODERS) - set(cfg.train.freeze)]
    moving += [p.name for p in later[1:] if set(p.restore) & set(ENCODERS) and p.name not in moving]
    if moving:
        raise ConfigError(f"model.mapper.new_items: text fits the items' title vectors to the encoder when phase "
                          f"{phases[first].name!r} (the first on hybrid prompts) starts, and phase(s) {moving} train "
                          f"or restore the encoder from then on, which would leave them fitted to an older encoder: "
                          f"train the encoder before the hybrid phases (a strategy such as dual_stage) or use "
                          f"model.mapper.new_items: unknown")
    return phases[first].name


def fit_table(model: Hybrid, params: dict, data: SplitData, titles, tokenizer) -> tuple[np.ndarray, dict]:
    """(the item_text table, what the fit found) for the hybrid `model` with `params` (encoder, mapper counts
    and the LLM's input embeddings), its ridge strength picked on validation rows `data`."""
    users, = id_rows(model, Hybrid.user_vectors, params, data)
    items = jax.device_get(jax.jit(lambda p: model.apply({"params": p}, method=Hybrid.item_vectors))(params))
    seen = np.asarray(jax.device_get(params["mapper"][COUNTS]["item_seen"])) > 0
    features = title_features(tokenizer, params["llm"]["model"]["embed_tokens"]["embedding"], titles)
    table, found = fit_item_vectors(features, items, seen, users, data.iid, data.label)
    return table, {**found, "new_items": int((~seen[1:]).sum())}


def with_table(tree: dict, table: np.ndarray) -> dict:
    """tree (a params or frozen tree holding the mapper's counts) with item_text set to table."""
    out = jax.tree_util.tree_map(lambda x: x, tree)
    set_path(out, TABLE, np.asarray(table, out["mapper"][COUNTS]["item_text"].dtype))
    return out
