"""Configs from YAML files and `--set` flags: parsing, merging, and a type check of every key.

`load_config(path, overrides)` reads a YAML file (with `base: other.yaml` merged underneath),
applies `--set a.b=value` overrides and builds the frozen `Config`, refusing unknown keys and wrong
types before anything is compiled.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from sasrecllm_jax.config.checks import validate
from sasrecllm_jax.config.schema import Config
from sasrecllm_jax.config.typecheck import from_dict
from sasrecllm_jax.errors import ConfigError


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
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where} {assignment!r}: the value is not valid YAML ({problem}); a mapping is written "
                          f"{{train: 256, eval: 128}}, a list [a, b], text with ': ' or braces in quotes") from None
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


def _origin(key: str, path: Path | None, assignments: list[tuple[str, str]]) -> str:
    """Where the value of a dotted key came from: the last `--set` that assigned it (or a section or list
    holding it), else the YAML file (its `base` files included), else the defaults."""
    for set_key, assignment in reversed(assignments):
        if key == set_key or key.startswith((set_key + ".", set_key + "[")):
            return f"--set {assignment}"
    return str(path) if path is not None else "the defaults"


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The Config of a YAML file and `--set` flags, every key typed and every value checked
    (config/checks.py). An error names the flag that set the bad value, else the file."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        data = read_yaml(path)
    assignments = []
    for o in overrides:
        apply_override(data, o)
        assignments.append((o.split("=", 1)[0].strip(), o))
    try:
        cfg = from_dict(Config, data, "")
        validate(cfg)
    except ConfigError as e:
        if e.key is None:
            raise
        raise ConfigError(f"{_origin(e.key, path, assignments)}: {e}", key=e.key) from None
    return cfg
