"""Every configuration is a frozen dataclass; presets are module constants; YAML files override them.

The one place where defaults live. `load_config(path, overrides)` reads a YAML file, applies
`--set a.b=value` overrides and validates every key and type before anything is compiled.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A bad configuration: the message names the file, the key and the fix."""


# --------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3-style rotary scaling (`rope_type: llama3` in a Hugging Face config)."""
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_layers: int = 22
    num_heads: int = 32
    num_kv_heads: int = 4
    head_dim: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    param_dtype: str = "float32"       # base weights; "bfloat16" on GPU
    dtype: str = "float32"             # activations / matmul inputs
    attention: Literal["xla", "cudnn"] = "xla"  # cudnn: GPU only, right-padded batches
    # per-layer rematerialisation: "full" saves only layer inputs, "dots" saves matmul outputs,
    # "cheap" recomputes elementwise work (fp32 norm and rotary intermediates, silu, LoRA dropout) and,
    # on the XLA attention path, the [B, heads, T, T] scores
    remat: Literal["none", "full", "dots", "cheap"] = "none"
    scan_unroll: int = 1  # layers per iteration of the layer loop: fewer loop trips, longer compiles


TINYLLAMA_1_1B = LlamaConfig()
SMOLLM2_135M = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                           num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5,
                           rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True)
DEBUG_TINY = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=512)
LLAMA_PRESETS = {"TINYLLAMA_1_1B": TINYLLAMA_1_1B, "SMOLLM2_135M": SMOLLM2_135M, "DEBUG_TINY": DEBUG_TINY}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")  # names of the adapted projections

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    hidden: int = 64
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    max_len: int = 25                  # history length fed to the encoder (left-padded)
    # not in the reference: add per-user and per-item terms to the score <user, item>. "learned": biases
    # that start at 0 and train with SASRec. "counts": the train split's counted log-odds (models/pop.py),
    # fixed (group pop, which no phase trains), so SASRec learns what taste adds to rating tendencies.
    # Pooled AUC on ML-1M rewards knowing how generously a user rates and how well an item is liked,
    # which a history of liked items cannot tell (docs/RESULTS.md section 8). Unseen users get 0.
    bias: Literal["none", "learned", "counts"] = "none"


@dataclasses.dataclass(frozen=True)
class MFConfig:
    dim: int = 256


@dataclasses.dataclass(frozen=True)
class PopConfig:
    prior: float = 5.0                 # pseudo-rows at the global positive rate added to every count


@dataclasses.dataclass(frozen=True)
class MapperConfig:
    hidden: int = 320
    num_tokens: int = 1                # soft tokens per ID placeholder
    # "gate": the hybrid's score adds g x the encoder's own score <user, item>, with g a learned scalar
    # of the mapper group that starts at 1, so the LLM learns a correction to the ID model's logit.
    # "residual": score = <user, item> + a x the LLM's score, a a learned scalar of the mapper group that
    # starts at 0: the hybrid starts as the ID model exactly, and the LLM's share grows as it helps.
    fusion: Literal["none", "gate", "residual"] = "none"
    # "zeros": the output layer starts at zero (as LoRA's B does), so the soft tokens start as zero vectors:
    # the hybrid starts as the text model (plus g x the ID score with the gate) and learns what the tokens add
    out_init: Literal["default", "zeros"] = "default"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    llm: str = "SMOLLM2_135M"          # a preset name; weights come from `weights`
    llm_overrides: dict = dataclasses.field(default_factory=dict)  # e.g. {param_dtype: bfloat16}
    weights: str = "smollm2"           # "smollm2" (registry GGUF), "random", a GGUF file or an HF folder
    encoder: Literal["sasrec", "mf", "pop"] = "sasrec"  # pop: counted tendencies, for method pop only
    sasrec: SASRecConfig = SASRecConfig()
    mf: MFConfig = MFConfig()
    pop: PopConfig = PopConfig()
    mapper: MapperConfig = MapperConfig()
    lora: LoraConfig = LoraConfig()
    score_head: Literal["yes_logit", "log_odds"] = "log_odds"

    def llama(self) -> LlamaConfig:
        if self.llm not in LLAMA_PRESETS:
            raise ConfigError(f"model.llm = {self.llm!r} is not a preset; choose one of {list(LLAMA_PRESETS)}")
        cfg = from_dict(LlamaConfig, {**dataclasses.asdict(LLAMA_PRESETS[self.llm]), **self.llm_overrides},
                        "model.llm_overrides")
        if cfg.scan_unroll < 1:
            raise ConfigError(f"model.llm_overrides.scan_unroll = {cfg.scan_unroll}; use 1 (a loop over layers) "
                              f"up to {cfg.num_layers} (every layer inlined)")
        return cfg


# --------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "ml100k"            # a prepared folder, or a name data_tools can prepare: ml100k
    data_dir: str = "data"             # where named datasets are prepared
    prompt_hybrid: str = "configs/prompts/hybrid.txt"
    prompt_text: str = "configs/prompts/text.txt"
    answer_yes: str = " Yes"
    answer_no: str = " No"
    max_titles: int = 10               # most recent liked titles shown in the prompt
    max_tokens: int = 320              # longest prompt; longer ones are refused, never cut silently
    pad_multiple: int = 16             # pad batch lengths to a multiple (fewer compilations)
    # Row caps (a seeded random subset, 0 = all): "train" caps the rows of prompted (LLM) phases,
    # "eval" the rows of every evaluation and of the final test. Encoder phases train on every row.
    max_rows: dict = dataclasses.field(default_factory=dict)
    cpu_max_rows: dict = dataclasses.field(default_factory=dict)  # the same, applied only on the CPU backend
    eval_split: Literal["valid_small", "valid"] = "valid_small"


# --------------------------------------------------------------------------- training
@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    name: str = "main"
    trainable: tuple[str, ...] = ("mapper", "lora")   # groups: sasrec | mf | mapper | lora
    prompt: Literal["text", "hybrid", "none"] = "hybrid"  # none: encoder-only (sasrec / mf)
    epochs: float = 1.0
    max_steps: int = 0                 # > 0 caps the phase
    lr: dict = dataclasses.field(default_factory=lambda: {"mapper": 1e-3, "lora": 1e-3})
    restore: dict = dataclasses.field(default_factory=dict)  # group -> "phase:NAME" or a run folder
    restore_best: bool = True          # end the phase on its best checkpoint (what the next phase starts from)
    eval_every: int = 0                # steps between evaluations; 0: train.eval_every for prompted
                                       # phases, once per epoch for encoder phases
    patience: int = 0                  # evaluations without improvement before stopping; 0: train.patience


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    method: Literal["pop", "mf", "sasrec", "icl", "tallrec", "collm_mf", "sasrecllm"] = "sasrecllm"
    strategy: str = "dual_stage"       # for sasrecllm: dual_stage | hierarchical_freezing | plug_and_play
    phases: tuple[PhaseConfig, ...] = ()  # empty: taken from the method / strategy preset
    # per phase name, fields that replace the preset's (or train.phases'): e.g. a lower learning rate for
    # the hybrid phase alone, {hybrid: {lr: {mapper: 3.0e-4, lora: 3.0e-4}, patience: 2}}
    phase_overrides: dict = dataclasses.field(default_factory=dict)
    batch_size: int = 16
    eval_batch_size: int = 64
    encoder_batch_size: int = 1024
    warmup_steps: int = 20
    weight_decay: float = 1e-3
    encoder_weight_decay: float = 1e-4
    clip_norm: float = 1.0             # 0 disables clipping
    eval_every: int = 100              # steps between evaluations in prompted phases (0: once per epoch)
    eval_at_start: bool = False        # prompted phases also evaluate before their first step: the curve shows
                                       # where a phase starts, and a phase that only hurts hands on its input
    patience: int = 20                 # evaluations without improvement before stopping
    seed: int = 0
    log_every: int = 10
    collab: Literal["on", "drop", "shuffle"] = "on"  # ablation of the collaborative tokens
    freeze: tuple[str, ...] = ()       # ablation: groups that never train, in any phase
    sharding: Literal["none", "data", "fsdp"] = "none"  # parameter layout over all devices
    distributed: bool = False          # call jax.distributed.initialize() (several hosts)
    phase_cache: str = ""              # a folder: reuse phases other runs trained on identical inputs
                                       # (train/phase_cache.py); "" trains every phase
    enc_epochs: float = 10.0           # preset phases: encoder pretraining epochs
    enc_lr: float = 1e-2               # preset phases: encoder pretraining lr (REFERENCE section 2)
    llm_lr: float = 1e-3               # preset phases: LoRA / mapper lr (REFERENCE section 5)
    llm_epochs: float = 1.0            # preset phases: epochs of each LLM phase


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()


# --------------------------------------------------------------------------- loading
def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where} = {value!r}; choose one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp)
        return tuple(_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls, data: dict, where: str = "config"):
    """Build a (nested) frozen dataclass from plain data; unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 1e-5 as a string (it wants 1.0e-5); researchers write 1e-5. Read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str):
    """yaml.safe_load, except that 1e-5 is a float."""
    return yaml.load(text, Loader=_Loader)


def apply_override(data: dict, assignment: str, where: str = "--set") -> dict:
    """`a.b.c=value` with value parsed as YAML (numbers, lists, booleans...)."""
    if "=" not in assignment:
        raise ConfigError(f"{where} {assignment!r}: expected key=value, e.g. train.batch_size=32")
    key, raw = assignment.split("=", 1)
    value = load_yaml(raw) if raw.strip() else ""
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where} {assignment!r}: {p} is not a section")
    node[parts[-1]] = value
    return data


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: Path, seen: tuple = ()) -> dict:
    """A config file as plain data; `base: other.yaml` (relative to the file) is merged underneath."""
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `base` files include each other in a loop")
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with data / model / train")
    base = data.pop("base", None)
    if base is not None:
        data = _deep_merge(read_yaml(path.parent / base, seen + (path.resolve(),)), data)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    data: dict = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        data = read_yaml(path)
        where = str(path)
    for o in overrides:
        apply_override(data, o)
    cfg = from_dict(Config, data, where)
    cfg.model.llama()  # validates the preset and its overrides now, not at compile time
    return cfg
