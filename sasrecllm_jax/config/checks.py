"""Checks of meaning that types cannot express, run on every config when it is read.

`RULES` holds one line per key: what its value must be. Phases (`train.phases[i]` and every
`train.phase_overrides.NAME`) follow `PHASE_RULES`, the LLM architecture (preset plus
`model.llm_overrides`) `LLAMA_RULES`; a few checks relate two keys. A failure is a ConfigError that
names the key (dotted) and carries it, so that `config/loading.py` can name where the value came from:
the YAML file or the `--set` flag.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from sasrecllm_jax.config.presets import LLAMA_PRESETS, llm_config
from sasrecllm_jax.config.schema import Config, PhaseConfig
from sasrecllm_jax.config.typecheck import from_dict
from sasrecllm_jax.errors import ConfigError

# the groups a phase may train or train.freeze may name (train/groups.py TRAINABLE; a test keeps them equal)
TRAINABLE_GROUPS = ("sasrec", "mf", "mapper", "lora")
ROW_CAP_KINDS = ("train", "eval")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# (test, what the value must be)
POSITIVE = (lambda v: _finite(v) and v > 0, "must be > 0")
AT_LEAST_0 = (lambda v: _finite(v) and v >= 0, "must be >= 0")
AT_LEAST_1 = (lambda v: _finite(v) and v >= 1, "must be >= 1")
RATE = (lambda v: _finite(v) and v > 0, "must be a finite number > 0")
DROPOUT = (lambda v: _finite(v) and 0 <= v < 1, "must be in [0, 1)")
NONEMPTY = (lambda v: bool(str(v)), "must not be empty")

RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.dataset": NONEMPTY,
    "data.answer_yes": NONEMPTY,
    "data.answer_no": NONEMPTY,
    "data.max_titles": AT_LEAST_0,
    "data.max_tokens": POSITIVE,
    "data.pad_multiple": POSITIVE,
    "data.pad_lengths": AT_LEAST_0,
    "data.late_rows": DROPOUT,
    "model.sasrec.hidden": POSITIVE,
    "model.sasrec.num_blocks": POSITIVE,
    "model.sasrec.num_heads": POSITIVE,
    "model.sasrec.dropout": DROPOUT,
    "model.sasrec.max_len": POSITIVE,
    "model.mf.dim": POSITIVE,
    "model.pop.prior": RATE,
    "model.mapper.hidden": POSITIVE,
    "model.mapper.cross_rank": POSITIVE,
    "model.mapper.num_tokens": AT_LEAST_1,
    "model.mapper.item_dropout": DROPOUT,
    "model.mapper.llm_gate_init": (_finite, "must be a finite number"),
    "model.mapper.unknown_score_init": (_finite, "must be a finite number"),
    "model.lora.rank": POSITIVE,
    "model.lora.alpha": RATE,
    "model.lora.dropout": DROPOUT,
    "train.batch_size": POSITIVE,
    "train.eval_batch_size": POSITIVE,
    "train.encoder_batch_size": POSITIVE,
    "train.warmup_steps": AT_LEAST_0,
    "train.weight_decay": AT_LEAST_0,
    "train.encoder_weight_decay": AT_LEAST_0,
    "train.clip_norm": AT_LEAST_0,
    "train.eval_every": AT_LEAST_0,
    "train.patience": AT_LEAST_0,
    "train.seed": AT_LEAST_0,
    "train.log_every": POSITIVE,
    "train.enc_epochs": AT_LEAST_0,
    "train.llm_epochs": AT_LEAST_0,
    "train.enc_lr": RATE,
    "train.llm_lr": RATE,
}

PHASE_RULES = {"epochs": AT_LEAST_0, "max_steps": AT_LEAST_0, "eval_every": AT_LEAST_0, "patience": AT_LEAST_0}

LLAMA_RULES = {name: POSITIVE for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                                           "num_kv_heads", "head_dim", "max_position_embeddings")}
LLAMA_RULES.update(rms_norm_eps=RATE, rope_theta=RATE, scan_unroll=AT_LEAST_1)


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _refuse(key: str, value, requirement: str) -> None:
    raise ConfigError(f"{key} = {value!r}: {requirement}", key=key)


def _apply(rules: dict, obj, prefix: str) -> None:
    """Check every rule of `rules` on the fields of `obj`, keys named under `prefix`."""
    for name, (test, requirement) in rules.items():
        value = _get(obj, name)
        if not test(value):
            _refuse(f"{prefix}{name}", value, requirement)


def _check_phase(phase: PhaseConfig, prefix: str) -> None:
    """A phase's counts and rates: epochs, steps, evaluation interval, patience >= 0, every lr finite > 0."""
    _apply(PHASE_RULES, phase, prefix)
    for group, lr in phase.lr.items():
        if not RATE[0](lr):
            _refuse(f"{prefix}lr.{group}", lr, RATE[1])
    bad = sorted(set(phase.trainable) - set(TRAINABLE_GROUPS))
    if bad:
        _refuse(f"{prefix}trainable", list(phase.trainable), f"unknown group(s) {bad}; groups: {list(TRAINABLE_GROUPS)}")


def _check_row_caps(cfg: Config) -> None:
    for field in ("max_rows", "cpu_max_rows"):
        for kind, cap in getattr(cfg.data, field).items():
            key = f"data.{field}.{kind}"
            if kind not in ROW_CAP_KINDS:
                raise ConfigError(f"data.{field}: unknown key {kind!r}; use {' and '.join(ROW_CAP_KINDS)} "
                                  f"(write {{train: 256, eval: 256}}, with a space after each colon)", key=key)
            if not (isinstance(cap, int) and not isinstance(cap, bool) and cap >= 0):
                _refuse(key, cap, "must be an integer >= 0 (0: every row)")


def _check_llm(cfg: Config) -> None:
    """The LLM architecture: a known preset, and its overrides typed and in range."""
    if cfg.model.llm not in LLAMA_PRESETS:
        raise ConfigError(f"model.llm = {cfg.model.llm!r} is not a preset; choose one of {list(LLAMA_PRESETS)}",
                          key="model.llm")
    try:
        llama = llm_config(cfg.model)
    except ConfigError as e:
        raise ConfigError(str(e), key=e.key or "model.llm_overrides") from None
    _apply(LLAMA_RULES, llama, "model.llm_overrides.")
    if llama.num_heads % llama.num_kv_heads:
        _refuse("model.llm_overrides.num_kv_heads", llama.num_kv_heads,
                f"must divide num_heads ({llama.num_heads})")


def validate(cfg: Config) -> None:
    """Raise ConfigError (carrying the dotted key) for the first value no run can use."""
    _apply(RULES, cfg, "")
    _check_row_caps(cfg)
    _check_llm(cfg)
    s = cfg.model.sasrec
    if s.hidden % s.num_heads:
        _refuse("model.sasrec.num_heads", s.num_heads, f"must divide model.sasrec.hidden ({s.hidden})")
    if cfg.model.mapper.item_dropout and cfg.model.mapper.new_items == "id":
        _refuse("model.mapper.item_dropout", cfg.model.mapper.item_dropout,
                "shows rows' items as a new item's, so it needs model.mapper.new_items: unknown or text")
    m = cfg.model.mapper
    if m.unknown_id_score == "learned" and (m.new_items != "unknown" or m.fusion == "none"):
        _refuse("model.mapper.unknown_id_score", m.unknown_id_score,
                "replaces the ID score of rows whose item is shown as unknown, so it needs "
                "model.mapper.new_items: unknown and model.mapper.fusion: gate or residual")
    if m.unknown_id_score == "offset" and (m.new_items == "id" or m.fusion == "none"):
        _refuse("model.mapper.unknown_id_score", m.unknown_id_score,
                "offsets the ID score of rows whose item has no train row, so it needs "
                "model.mapper.new_items: unknown or text and model.mapper.fusion: gate or residual")
    if m.unknown_score_init and m.unknown_id_score == "encoder":
        _refuse("model.mapper.unknown_score_init", m.unknown_score_init,
                "is the learned unknown-item ID score's start, so it needs model.mapper.unknown_id_score: "
                "learned or offset")
    if cfg.model.mapper.llm_gate_init and cfg.model.mapper.fusion != "residual":
        _refuse("model.mapper.llm_gate_init", cfg.model.mapper.llm_gate_init,
                "is the residual fusion's starting weight, so it needs model.mapper.fusion: residual")
    if m.llm_gates != "one" and (m.fusion != "residual" or m.new_items == "id"):
        _refuse("model.mapper.llm_gates", m.llm_gates,
                "weighs the LLM's log-odds apart on rows whose item is shown as unknown, so it needs "
                "model.mapper.fusion: residual and model.mapper.new_items: unknown or text")
    if m.llm_gates == "unknown_only" and not m.item_dropout and not cfg.data.late_rows:
        _refuse("model.mapper.llm_gates", m.llm_gates,
                "lets the LLM's log-odds count only on rows whose item is shown as unknown, and with "
                "model.mapper.item_dropout 0 and data.late_rows 0 no train row is: nothing would train. Set "
                "model.mapper.item_dropout (e.g. 0.2)")
    if cfg.model.mapper.fusion_start != "init" and cfg.model.mapper.fusion != "residual":
        _refuse("model.mapper.fusion_start", cfg.model.mapper.fusion_start,
                "fits the residual fusion's starting weight, so it needs model.mapper.fusion: residual")
    if cfg.model.mapper.fusion_start != "init" and cfg.train.collab != "on":
        _refuse("model.mapper.fusion_start", cfg.model.mapper.fusion_start,
                f"fits the fusion of the collaborative inputs as they are, which train.collab: {cfg.train.collab} "
                f"changes: train with train.collab: on")
    if cfg.model.mapper.fusion_start != "init" and (cfg.model.mapper.llm_gate_init or cfg.model.mapper.unknown_score_init):
        _refuse("model.mapper.fusion_start", cfg.model.mapper.fusion_start,
                "fits llm_gate and unknown_score itself: leave model.mapper.llm_gate_init and unknown_score_init at 0")
    if cfg.data.pack_train and cfg.train.collab == "shuffle":
        _refuse("data.pack_train", cfg.data.pack_train,
                "keeps a pack's rows together, which train.collab: shuffle mixes: train unpacked (data.pack_train: "
                "false) or with train.collab: on or drop")
    if cfg.model.mapper.inject == "last" and cfg.model.mapper.num_tokens != 1:
        _refuse("model.mapper.num_tokens", cfg.model.mapper.num_tokens,
                "must be 1 with model.mapper.inject: last (one vector is added to the last position)")
    if cfg.model.mapper.inject == "cross" and cfg.model.mapper.out_init == "zeros":
        _refuse("model.mapper.out_init", cfg.model.mapper.out_init,
                "with model.mapper.inject: cross leaves nothing to train: the cross-attention would read zero vectors "
                "through gates at zero, so no gradient reaches either; the gates alone start the phase as the text "
                "model, so use model.mapper.out_init: default")
    if cfg.model.mapper.cross_rank != 64 and cfg.model.mapper.inject != "cross":
        _refuse("model.mapper.cross_rank", cfg.model.mapper.cross_rank,
                "is the cross-attention's rank, so it needs model.mapper.inject: cross")
    if cfg.model.mapper.reads_text_template and cfg.data.prompt_hybrid_unknown_item:
        _refuse("data.prompt_hybrid_unknown_item", cfg.data.prompt_hybrid_unknown_item,
                f"renders hybrid templates; with model.mapper.inject: {cfg.model.mapper.inject} every row reads "
                f"data.prompt_text")
    if cfg.model.mapper.unknown_item_vectors != "add" and (cfg.model.mapper.new_items != "unknown"
                                                            or not cfg.model.mapper.reads_text_template):
        _refuse("model.mapper.unknown_item_vectors", cfg.model.mapper.unknown_item_vectors,
                "leaves out the vectors of rows whose item is shown as unknown, so it needs "
                "model.mapper.new_items: unknown and model.mapper.inject: last or cross")
    if cfg.data.prompt_hybrid_unknown_item and cfg.model.mapper.new_items != "unknown":
        _refuse("data.prompt_hybrid_unknown_item", cfg.data.prompt_hybrid_unknown_item,
                "renders rows whose item the mapper shows as unknown, so it needs model.mapper.new_items: unknown")
    if cfg.data.answer_yes == cfg.data.answer_no:
        _refuse("data.answer_no", cfg.data.answer_no, "must differ from data.answer_yes")
    bad = sorted(set(cfg.train.freeze) - set(TRAINABLE_GROUPS))
    if bad:
        _refuse("train.freeze", list(cfg.train.freeze), f"unknown group(s) {bad}; groups: {list(TRAINABLE_GROUPS)}")
    for i, phase in enumerate(cfg.train.phases):
        _check_phase(phase, f"train.phases[{i}].")
    for name, fields in cfg.train.phase_overrides.items():
        if isinstance(fields, dict):  # (not a mapping: refused with its own message when phases are resolved)
            prefix = f"train.phase_overrides.{name}"
            _check_phase(from_dict(PhaseConfig, {k: v for k, v in fields.items() if k != "name"}, prefix),
                         prefix + ".")

