"""Settings: a TOML file with one table per stage, plus `--set stage.key=value` overrides, and the
one converter from those tables to typed config dataclasses (stages' and the trainer's).

    [transcribe]
    backend = "faster-whisper"
    model = "/models/tiny.en"

Unknown stages or keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from songmill.annotate.base import StageConfig

CONFIG_FILE = "songmill.toml"


class ConfigError(ValueError):
    pass


def load_settings(
    path: str | None, corpus_root: str | None, overrides: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """Stage tables from the TOML file (explicit path, else `<corpus>/songmill.toml` if present)
    with the `--set` overrides applied on top."""
    settings: dict[str, dict[str, Any]] = {}
    if path is None and corpus_root and "://" not in corpus_root:
        candidate = os.path.join(corpus_root, CONFIG_FILE)
        path = candidate if os.path.exists(candidate) else None
    if path is not None:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path, "rb") as f:
            try:
                raw = tomllib.load(f)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: {exc}") from None
        for section, table in raw.items():
            if not isinstance(table, dict):
                raise ConfigError(
                    f"{path}: top-level key {section!r} must be a [table] of stage settings"
                )
            settings[section] = dict(table)
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise ConfigError(f"--set expects stage.key=value, got {item!r}")
        settings.setdefault(section, {})[name] = _parse_value(value.strip())
    return settings


def _parse_value(text: str) -> Any:
    """TOML literal if it parses as one (numbers, booleans, arrays, quoted strings), else the text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def build_config(
    config_class: type[StageConfig], stage: str, table: Mapping[str, Any] | None
) -> StageConfig:
    """A stage's config dataclass from its settings table, with types checked and coerced."""
    return config_class(**coerce_settings(config_class, table or {}, f"[{stage}]", ConfigError))


def coerce_settings(
    config_class: type, values: Mapping[str, Any], where: str, error: type[Exception] = ConfigError
) -> dict[str, Any]:
    """`values` checked against the fields of the dataclass `config_class` and coerced to their
    types: the one converter from settings (TOML, `--set`, a saved trainer.json) to typed configs,
    for stage configs and TrainConfig alike. Unknown keys and values that do not fit are `error`s
    whose message starts with `where`."""
    hints = typing.get_type_hints(config_class)
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise error(f"{where} unknown setting(s) {unknown}; known: {sorted(names)}")
    out = {}
    for name, value in values.items():
        try:
            out[name] = coerce(value, hints[name])
        except (TypeError, ValueError, OverflowError):
            raise error(
                f"{where} {name} = {json.dumps(value, default=str)} is not a valid {hints[name]}"
            ) from None
    return out


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def coerce(value: Any, hint: Any) -> Any:
    """`value` as the type `hint` names (raises ValueError if it is not one): Optional passes
    None; bools from true/false/yes/no/1/0; ints only from integral numbers; strs from numbers
    too (`--set x.model=123`); lists from a comma-separated string; tuples and lists element by
    element; any other type as given."""
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]: None passes, anything else is checked against X
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    kind = typing.get_origin(hint) or hint
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
    elif kind is int and not isinstance(value, bool | list | dict):
        number = float(value)
        if math.isfinite(number) and number == int(number):
            return int(number)
    elif kind is float and not isinstance(value, bool | list | dict):
        return float(value)
    elif kind is str and not isinstance(value, bool | list | dict):
        return str(value)
    elif kind is list and isinstance(value, str):
        return [
            coerce(v.strip(), args[0]) if args else v.strip() for v in value.split(",") if v.strip()
        ]
    elif kind is list and isinstance(value, list | tuple):
        return [coerce(v, args[0]) for v in value] if args else list(value)
    elif kind is tuple and isinstance(value, list | tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if args and len(args) == len(value):
            return tuple(coerce(v, a) for v, a in zip(value, args, strict=True))
        if not args:
            return tuple(value)
    elif kind is dict and isinstance(value, dict):
        return value
    elif kind not in (bool, int, float, str, list, tuple, dict):
        return value
    raise ValueError(f"{value!r} is not a valid {hint}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
            + "}"
        )
    raise ConfigError(f"cannot write {value!r} to TOML")


def dump_settings(settings: dict[str, dict[str, Any]], header: str = "") -> str:
    """Stage tables as TOML text that load_settings reads back to the same values."""
    lines = [f"# {line}" for line in header.splitlines()]
    for stage, table in settings.items():
        if not table:
            continue
        lines += ["", f"[{stage}]"] + [
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None
        ]
    return "\n".join(lines).lstrip("\n") + "\n"


def write_settings(path: str, settings: dict[str, dict[str, Any]], header: str = "") -> None:
    """Write a settings TOML atomically (a temporary file renamed into place)."""
    text = dump_settings(settings, header)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
