"""Plain data (parsed YAML) <-> the frozen config dataclasses, with every key and type checked."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from sasrecllm_jax.errors import ConfigError


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
            raise ConfigError(f"{where} = {value!r}; choose one of {list(typing.get_args(tp))}", key=where)
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}", key=where)
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}", key=where)
        (item_tp, *_) = typing.get_args(tp)
        return tuple(_check_type(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}", key=where)
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        hint = (f"; YAML reads a bare Yes, No, On, Off, True or False as a boolean: quote the text, e.g. "
                f"--set '{where}=\" Yes\"'" if tp is str and isinstance(value, bool) else "")
        raise ConfigError(f"{where} must be {tp.__name__}, got {value!r} ({type(value).__name__}){hint}", key=where)
    return value


def _unknown_keys(unknown: list[str], names: set[str], where: str) -> ConfigError:
    """The error for keys a section does not have, with the closest known key when one is close."""
    close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {sorted(names)}"
    section = f"{where}: " if where else ""
    return ConfigError(f"{section}unknown key(s) {unknown}; {hint}",
                       key=f"{where}.{unknown[0]}" if where else unknown[0])


def from_dict(cls, data: dict, where: str = "config"):
    """Build a (nested) frozen dataclass from plain data; unknown keys and wrong types are errors. `where`
    names the section (dotted; "" for the top level): errors carry the dotted key they are about."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise _unknown_keys(unknown, names, where)
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg
