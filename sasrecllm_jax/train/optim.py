"""One optax transform per trainable group, chosen by the partition's labels (optax.multi_transform).

Only the phase's trainable leaves enter the optimizer, so frozen groups carry no optimizer state.
Learning rate per group: linear warmup then cosine decay. Weight decay on matrices only.
"""
from __future__ import annotations

import jax
import optax

from sasrecllm_jax.config import PhaseConfig, TrainConfig
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.train import groups


def schedule(peak: float, warmup: int, total: int) -> optax.Schedule:
    warmup = max(0, min(warmup, total - 1))
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else peak, peak, warmup, max(total, warmup + 1), peak * 0.0)


def make_optimizer(phase: PhaseConfig, trainable, total_steps: int, cfg: TrainConfig):
    """(tx, {group: schedule}) for the trainable tree of one phase."""
    labels = groups.labels(trainable)
    present = set(jax.tree_util.tree_leaves(labels))
    missing_lr = sorted(present - set(phase.lr))
    if missing_lr:
        raise ConfigError(f"phase {phase.name!r}: no learning rate for group(s) {missing_lr}; set "
                          f"lr: {{{missing_lr[0]}: 1e-3}} in the phase")
    transforms, schedules = {}, {}
    for group in present:
        schedules[group] = schedule(float(phase.lr[group]), cfg.warmup_steps, total_steps)
        decay = cfg.encoder_weight_decay if group in groups.ENCODERS else cfg.weight_decay
        transforms[group] = optax.adamw(schedules[group], b1=0.9, b2=0.999, eps=1e-8, weight_decay=decay,
                                        mask=lambda tree: jax.tree_util.tree_map(lambda x: x.ndim >= 2, tree))
    tx = optax.multi_transform(transforms, labels)
    if cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx, schedules
