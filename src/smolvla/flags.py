"""Draccus-style command-line flags for dataclass configs: `--env.task=push --eval.n_episodes=10`.

Nested dataclass fields are addressed with dots, values are parsed by the field's annotated type (bool accepts
true/false/1/0/yes/no, tuples take comma-separated items, optional fields take `none`). An unknown or malformed flag
is one clear error listing what is valid, never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any

import yaml

from smolvla.errors import ConfigError

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


FILE_ONLY = {"file_only": True}  # field metadata: a structured setting (a list of records) only a config file sets


def _fields(cls: type) -> dict[str, Any]:
    """Flag-settable field name → annotated type."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and not f.metadata.get("file_only")}


def flag_names(config: Any, prefix: str = "") -> list[str]:
    """Every settable dotted name of a (nested) dataclass instance."""
    names = []
    for name in _fields(type(config)):
        value = getattr(config, name)
        if dataclasses.is_dataclass(value):
            names += flag_names(value, f"{prefix}{name}.")
        else:
            names.append(prefix + name)
    return names


def parse_value(text: str, kind: Any, where: str) -> Any:
    """Parse one flag value as `kind` (str, int, float, bool, tuple[X, ...], X | None)."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return parse_value(text, inner, where)
    if origin in (tuple, list):  # `a,b` or LeRobot's list form `[0,1]`
        item = args[0] if args else str
        text = text.strip()
        text = text[1:-1] if text.startswith("[") and text.endswith("]") else text
        items = [parse_value(part.strip().strip("'\""), item, where) for part in text.split(",") if part.strip()]
        if origin is tuple and Ellipsis not in args and len(args) > 1 and len(items) != len(args):
            raise ConfigError(f"--{where}: expected {len(args)} comma-separated items, got {text!r}")
        return tuple(items) if origin is tuple else items
    if origin is dict:  # LeRobot's JSON form: --rename_map='{"observation.images.top": "observation.images.camera1"}'
        try:
            value = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            value = None
        values = args[1] if args else str  # dict[str, str] (names), dict[str, int] (counts), dict[str, tuple[...]]
        listed = typing.get_origin(values) is tuple  # a JSON list per key, its items parsed and checked
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            if listed and all(isinstance(v, list) for v in value.values()):
                return {k: parse_value(",".join(map(str, v)), values, f"{where}.{k}") for k, v in value.items()}
            if not listed and all(type(v) is values for v in value.values()):
                return value
        if listed:
            example, noun = "[1, 2]", "lists"
        else:
            example, noun = ('"b"', "strings") if values is str else ("1", f"{values.__name__} values")
        raise ConfigError(f"--{where}: expected a JSON object of {noun}, e.g. '{{\"a\": {example}}}', got {text!r}")
    try:
        if kind is bool:
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError(text)
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        raise ConfigError(f"--{where}: expected {kind.__name__}, got {text!r}") from None
    raise ConfigError(f"--{where}: cannot parse a flag of type {kind}")


def apply_flags(config: Any, argv: list[str]) -> Any:
    """Set the fields of dataclass `config` from `--dotted.name=value` (or `--dotted.name value`) flags."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: flags look like --name=value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if _is_bool(config, key) and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
                value = "true"  # a bare boolean flag: `--quick` means `--quick=true`
            elif i + 1 >= len(argv):
                raise ConfigError(f"flag --{key} has no value")
            else:
                value, i = argv[i + 1], i + 1
        set_field(config, key, value)
        i += 1
    return config


def _is_bool(config: Any, dotted: str) -> bool:
    *parents, name = dotted.split(".")
    for part in parents:
        config = getattr(config, part, None)
        if not dataclasses.is_dataclass(config):
            return False
    return _fields(type(config)).get(name) is bool if dataclasses.is_dataclass(config) else False


def set_field(config: Any, dotted: str, text: str, prefix: str = "") -> None:
    """Set one (possibly nested) field from its flag text; `prefix` is the path already walked, for messages."""
    target, *rest = dotted.split(".")
    fields = _fields(type(config))
    if target not in fields:
        valid = ", ".join("--" + n for n in flag_names(config, prefix))
        raise ConfigError(f"unknown flag --{prefix}{dotted}; valid flags: {valid}")
    kind = fields[target]
    current = getattr(config, target)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"--{prefix}{dotted}: {prefix}{target} has no sub-settings")
        set_field(current, ".".join(rest), text, f"{prefix}{target}.")
    elif dataclasses.is_dataclass(current):
        valid = ", ".join("--" + n for n in flag_names(current, f"{prefix}{target}."))
        raise ConfigError(f"--{prefix}{dotted} is a group; set its fields: {valid}")
    else:
        setattr(config, target, parse_value(text, kind, prefix + dotted))


def describe(config: Any) -> str:
    """`--name=default` lines for --help."""
    lines = []
    for name in flag_names(config):
        value: Any = config
        for part in name.split("."):
            value = getattr(value, part)
        if isinstance(value, tuple):
            value = ",".join(map(str, value))
        lines.append(f"  --{name}={value}")
    return "\n".join(lines)


def _flag_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return str(value)


def apply_mapping(config: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Set fields from a nested mapping (a YAML/JSON config file), with the same checks and messages as flags."""
    if not isinstance(values, dict):
        raise ConfigError(f"config {prefix or 'file'} must be a mapping of settings, got {type(values).__name__}")
    for key, value in values.items():
        if isinstance(value, dict) and typing.get_origin(_fields(type(config)).get(key)) is dict:
            set_field(config, str(key), json.dumps(value), prefix)  # a mapping-valued setting, not a group
        elif isinstance(value, dict):
            if key not in _fields(type(config)):
                set_field(config, str(key), "", prefix)  # raises the unknown-flag error listing valid names
            nested = getattr(config, key)
            if not dataclasses.is_dataclass(nested):
                raise ConfigError(f"{prefix}{key} is a single setting, not a group; got a mapping {value!r}")
            apply_mapping(nested, value, f"{prefix}{key}.")
        else:
            set_field(config, str(key), _flag_text(value), prefix)
    return config


def to_mapping(config: Any) -> dict[str, Any]:
    """A nested dataclass as plain JSON/YAML-ready dicts (tuples become lists)."""
    out = {}
    for name in _fields(type(config)):
        value = getattr(config, name)
        if dataclasses.is_dataclass(value):
            value = to_mapping(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML (or JSON, a subset of YAML) config file into a mapping."""
    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(values).__name__}")
    return values
