"""Pure steps: train_step(state, batch) -> (state, metrics) and score_step(params, batch) -> scores.

Gradients are taken with respect to `state.trainable` only; `state.frozen` (the LLM base and any
group this phase does not train) is an input that is never differentiated. Dropout keys come from
fold_in(key, step), so a resumed run draws the same masks.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from sasrecllm_jax.trees import merge


@struct.dataclass
class TrainState:
    step: jax.Array
    trainable: Any
    frozen: Any
    opt_state: Any
    key: jax.Array                      # raw uint32 key data (checkpointable)


def weighted_bce(scores, labels, weights):
    """(sum of BCE-with-logits over real rows, number of real rows)."""
    losses = optax.sigmoid_binary_cross_entropy(scores.astype(jnp.float32), labels)
    return jnp.sum(losses * weights), jnp.sum(weights)


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation, schedules: dict) -> Callable:
    """apply_fn(params, batch, rngs) -> scores [B]."""

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        dropout = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)

        def loss_fn(trainable):
            scores = apply_fn(merge(trainable, state.frozen), batch, {"dropout": dropout})
            total, count = weighted_bce(scores, batch["label"], batch["weight"])
            return total / jnp.maximum(count, 1.0), scores

        (loss, scores), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   **{f"lr/{g}": s(state.step) for g, s in schedules.items()}}
        return state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics

    return train_step
