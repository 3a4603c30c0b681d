"""Stage settings: a TOML file with one table per stage, plus `--set stage.key=value` overrides.

    [transcribe]
    backend = "faster-whisper"
    model = "/models/tiny.en"

Unknown stages or keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from collections.abc import Iterable
from typing import Any

from songmill.annotate.base import Stage, StageConfig
from songmill.data_schema.store import Corpus

CONFIG_FILE = "songmill.toml"


class ConfigError(ValueError):
    pass


def load_settings(path: str | None, corpus_root: str | None, overrides: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
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
                raise ConfigError(f"{path}: top-level key {section!r} must be a [table] of stage settings")
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


def build_config(config_class: type[StageConfig], stage: str, table: dict[str, Any] | None) -> StageConfig:
    """A stage's config dataclass from its settings table, with types checked and coerced."""
    table = dict(table or {})
    hints = typing.get_type_hints(config_class)
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(f"[{stage}] unknown setting(s) {unknown}; known: {sorted(fields)}")
    values = {name: _coerce(stage, name, value, hints[name]) for name, value in table.items()}
    return config_class(**values)


def _coerce(stage: str, name: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]: None passes, anything else is checked against X
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    kind = typing.get_origin(hint) or hint
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, bool):
                return value
        elif kind in (int, float, str) and not isinstance(value, bool | list | dict):
            return kind(value)
        elif kind in (list, tuple) and isinstance(value, list | tuple):
            return kind(value)
        elif kind is dict and isinstance(value, dict):
            return value
        elif kind not in (bool, int, float, str, list, tuple, dict):
            return value
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"[{stage}] {name} = {json.dumps(value, default=str)} is not a valid {hint}")


def build_stages(names: Iterable[str], settings: dict[str, dict[str, Any]], corpus: Corpus | None = None) -> list[Stage]:
    """Stage objects, in the given order, configured from their settings tables."""
    from songmill.annotate import stage_class

    stages = []
    for name in names:
        try:
            cls = stage_class(name)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
        stages.append(cls(build_config(cls.config_class, name, settings.get(name)), corpus=corpus))
    return stages
