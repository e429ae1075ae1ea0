"""Methods and training strategies as data: each is a list of phases.

A phase names the groups that train, the prompt kind (`none` = the ID encoder alone, `text`,
`hybrid`), its length, a learning rate per group, and what it restores first: `{group: "phase:NAME"}`
takes that group from an earlier phase's best checkpoint of this run, `{group: "RUN_DIR"}` from the
final model of another run (plug-and-play), `{lora: "peft:DIR"}` from a Hugging Face PEFT adapter.
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from sasrecllm_jax.config import Config, PhaseConfig, from_dict, to_dict
from sasrecllm_jax.config.checks import TRAINABLE_GROUPS
from sasrecllm_jax.errors import ConfigError
from sasrecllm_jax.train.groups import ENCODERS, trainable_on


def preset_phases(method: str, strategy: str, encoder: str, enc_epochs: float = 10.0, llm_epochs: float = 1.0,
                  enc_lr: float = 1e-2, llm_lr: float = 1e-3) -> tuple[PhaseConfig, ...]:
    """The phases of a method; an encoder trained inside an LLM phase uses enc_lr / 10."""
    def _encoder(name: str, epochs: float) -> PhaseConfig:
        return PhaseConfig(name=name, trainable=(name,), prompt="none", epochs=epochs, lr={name: enc_lr})

    llm = lambda name, groups, prompt, **kw: PhaseConfig(
        name=name, trainable=groups, prompt=prompt, epochs=llm_epochs,
        lr={g: (enc_lr / 10 if g in ENCODERS else llm_lr) for g in groups}, **kw)
    if method in ("mf", "sasrec"):
        return (_encoder(method, enc_epochs),)
    if method in ("icl", "pop"):  # nothing trains: the untuned LLM, or the counted tendencies
        return ()
    if method == "tallrec":
        return (llm("text_lora", ("lora",), "text"),)
    if method == "collm_mf":
        return (_encoder("mf", enc_epochs), llm("hybrid", ("mapper", "lora"), "hybrid", restore={"mf": "phase:mf"}))
    enc = encoder
    presets = {
        # stage 1: the encoder alone and LoRA alone on text prompts; stage 2: mapper + LoRA on hybrid prompts
        "dual_stage": (_encoder(enc, enc_epochs), llm("text_lora", ("lora",), "text"),
                       llm("hybrid", ("mapper", "lora"), "hybrid",
                           restore={enc: f"phase:{enc}", "lora": "phase:text_lora"})),
        # hybrid prompts throughout: LoRA, then LoRA + mapper, then everything
        "hierarchical_freezing": (_encoder(enc, enc_epochs), llm("lora", ("lora",), "hybrid", restore={enc: f"phase:{enc}"}),
                                  llm("lora_mapper", ("lora", "mapper"), "hybrid"),
                                  llm("all", ("lora", "mapper", enc), "hybrid")),
        # a tuned LoRA and an encoder plugged together: only the mapper trains
        "plug_and_play": (_encoder(enc, enc_epochs), llm("text_lora", ("lora",), "text"),
                          llm("mapper", ("mapper",), "hybrid", restore={enc: f"phase:{enc}", "lora": "phase:text_lora"})),
    }
    if strategy not in presets:
        raise ConfigError(f"train.strategy = {strategy!r}; choose one of {list(presets)}")
    return presets[strategy]


# the prompt kinds a method's phases may train on (the others: any); icl and pop train nothing
METHOD_PROMPTS = {"mf": ("none",), "sasrec": ("none",), "tallrec": ("text",), "icl": (), "pop": ()}


def scoring_prompt(method: str, phases) -> str:
    """The prompt kind a finished run scores with: its last phase's; without phases, the untuned LLM's text
    prompt (icl) or none (pop, the counts)."""
    return phases[-1].prompt if phases else ("text" if method == "icl" else "none")


# the keys the phases' checks (resolve_phases) read, named with the file when --set gave them
PHASE_KEYS = ("train.phases", "train.phase_overrides", "train.method", "train.strategy", "train.freeze",
              "train.enc_epochs", "train.llm_epochs", "train.enc_lr", "train.llm_lr", "data.late_rows",
              "model.encoder", "model.mapper")


def phase_source(config_path, overrides) -> str:
    """What the phases' checks name as their source: the config file and the --set flags that shaped them."""
    shaping = [o for o in overrides if o.split("=", 1)[0].strip().startswith(PHASE_KEYS)]
    return str(config_path) + "".join(f" --set {o}" for o in shaping)


def resolve_phases(cfg: Config, config_path: str = "config", pending=()) -> tuple[PhaseConfig, ...]:
    """The phases a run executes, checked before anything is compiled. pending: run folders that will be
    finished before this run starts (a grid's earlier runs), which a phase may restore from."""
    t = cfg.train
    phases = t.phases or preset_phases(t.method, t.strategy, cfg.model.encoder, t.enc_epochs, t.llm_epochs,
                                       t.enc_lr, t.llm_lr)
    if t.method == "collm_mf" and cfg.model.encoder != "mf":
        raise ConfigError(f"{config_path}: method collm_mf needs model.encoder: mf")
    if (t.method == "pop") != (cfg.model.encoder == "pop"):
        raise ConfigError(f"{config_path}: method pop and model.encoder: pop go together (pop counts rating "
                          f"tendencies and has no vectors for a prompt); got method {t.method!r} with encoder "
                          f"{cfg.model.encoder!r}")
    if cfg.model.mapper.new_items != "id" and not any(ph.prompt == "hybrid" for ph in phases):
        raise ConfigError(f"{config_path}: model.mapper.new_items = {cfg.model.mapper.new_items!r} changes the item "
                          f"token of hybrid prompts, which method {t.method!r} does not use; leave it at 'id'")
    names = [ph.name for ph in phases]
    for name, fields in t.phase_overrides.items():
        where = f"{config_path}: train.phase_overrides.{name}"
        if name not in names:
            raise ConfigError(f"{where}: this run has no phase {name!r}; its phases are {names}")
        if not isinstance(fields, dict):
            raise ConfigError(f"{where} must be a mapping of phase fields, e.g. {{lr: {{mapper: 3.0e-4}}}}")
        if "name" in fields:
            raise ConfigError(f"{where}: a phase cannot be renamed here; write train.phases instead")
    phases = [from_dict(PhaseConfig, {**to_dict(ph), **t.phase_overrides[ph.name]},
                        f"{config_path}: train.phase_overrides.{ph.name}") if ph.name in t.phase_overrides else ph
              for ph in phases]
    allowed = METHOD_PROMPTS.get(t.method)
    foreign = [ph for ph in phases if allowed is not None and ph.prompt not in allowed]
    if foreign:  # e.g. --set train.method=sasrec on a config whose own phases train a hybrid
        trains = f"trains only phases with prompt: {' or '.join(allowed)}" if allowed else "trains nothing"
        raise ConfigError(f"{config_path}: train.method = {t.method!r} {trains}, but the config's train.phases "
                          f"(with train.phase_overrides) include {foreign[0].name!r} on {foreign[0].prompt} "
                          f"prompts; for {t.method}'s own phases add --set 'train.phases=[]' (or start from "
                          f"configs/experiments/ml1m/{t.method}.yaml)")
    freeze = set(t.freeze)
    out, seen = [], set()
    for i, ph in enumerate(phases):
        where = f"{config_path}: train.phases[{i}] ({ph.name})"
        if ph.name in seen:
            raise ConfigError(f"{where}: phase names must be unique")
        seen.add(ph.name)
        groups = tuple(g for g in ph.trainable if g not in freeze)
        allowed = trainable_on(ph.prompt, cfg.model.encoder)
        bad = sorted(set(groups) - allowed)
        if bad:
            raise ConfigError(f"{where}: group(s) {bad} cannot train on '{ph.prompt}' prompts (trainable there: "
                              f"{sorted(allowed)}); with model.encoder={cfg.model.encoder!r}")
        unknown = sorted(set(ph.lr) - set(TRAINABLE_GROUPS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], TRAINABLE_GROUPS, n=1)
            raise ConfigError(f"{where}: lr names {unknown[0]!r}, not a group"
                              f"{f' (did you mean {close[0]!r}?)' if close else ''}; groups: {list(TRAINABLE_GROUPS)}")
        no_lr = sorted(set(groups) - set(ph.lr))
        if no_lr:
            raise ConfigError(f"{where}: no learning rate for group(s) {no_lr}, which it trains; set lr: "
                              f"{{{no_lr[0]}: 1e-3}} in the phase (an lr in train.phase_overrides replaces the "
                              f"phase's whole lr mapping)")
        for group, source in ph.restore.items():
            if source.startswith("phase:"):
                if source[6:] not in seen - {ph.name}:
                    raise ConfigError(f"{where}: restore {group} from {source!r}, but no earlier phase has that name")
            elif source.startswith("peft:"):
                if group != "lora" or not (Path(source[5:]) / "adapter_config.json").exists():
                    raise ConfigError(f"{where}: restore {group} from {source!r}: a PEFT adapter restores lora only, "
                                      f"from a folder with adapter_config.json and adapter_model.safetensors")
            elif not (Path(source) / "final").exists() and Path(source).absolute() not in {Path(p).absolute() for p in pending}:
                raise ConfigError(f"{where}: restore {group} from {source!r}: no finished run there "
                                  f"({Path(source) / 'final'} is missing); train that run first or fix the path")
        if ph.patience < 0:
            raise ConfigError(f"{where}: patience must be >= 0 (0: train.patience)")
        if ph.epochs <= 0 and ph.max_steps <= 0:
            raise ConfigError(f"{where}: set epochs > 0 or max_steps > 0")
        if ph.rows != "all" and not cfg.data.late_rows:
            raise ConfigError(f"{where}: rows = {ph.rows!r} splits the train rows at data.late_rows, which is 0; "
                              f"set data.late_rows (e.g. 0.2: the latest fifth are the late rows)")
        out.append(dataclasses.replace(ph, trainable=groups))
    if cfg.data.late_rows and all(ph.rows == "all" for ph in out):
        raise ConfigError(f"{config_path}: data.late_rows = {cfg.data.late_rows} holds the late rows out of the encoder "
                          f"and its counts, but no phase trains on rows: early or late (phases "
                          f"{[ph.name for ph in out]}); set them, e.g. train.phase_overrides.hybrid.rows=late (a "
                          f"whole --set train.phase_overrides={{...}} replaces the config's), or drop data.late_rows")
    fusion_fitting_phase(cfg, out)  # refusals, before anything loads
    text_fitting_phase(cfg, out)
    return tuple(out)


def fusion_fitting_phase(cfg: Config, phases) -> str | None:
    """The phase whose fresh start fits the fusion (the first that trains the mapper on hybrid prompts), or
    None without fusion_start: late_fusion."""
    if cfg.model.mapper.fusion_start != "late_fusion":
        return None
    before = []  # hybrid phases before it
    for p in phases:
        if p.prompt != "hybrid":
            continue
        if "mapper" not in p.trainable:
            before.append(p.name)
        elif before:
            raise ConfigError(f"model.mapper.fusion_start: late_fusion is fitted when phase {p.name!r} (the first that "
                              f"trains the mapper on hybrid prompts) starts, and phase(s) {before} read hybrid prompts "
                              f"before it with llm_gate 0, where the LLM term counts for nothing: train the mapper in "
                              f"the first hybrid phase or set model.mapper.fusion_start: init")
        else:
            return p.name
    raise ConfigError(f"model.mapper.fusion_start: late_fusion is fitted when the first phase that trains the "
                      f"mapper on hybrid prompts starts, and this run has none (phases "
                      f"{[(p.name, p.prompt, list(p.trainable)) for p in phases]}): add such a phase or set "
                      f"model.mapper.fusion_start: init")


def text_fitting_phase(cfg: Config, phases) -> str | None:
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
