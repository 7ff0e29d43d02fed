"""Reading one value of the configuration: typed, bounded, or a `ConfigError` naming its key.

Shared by the sections of the configuration (sidecar/config/model.py, sidecar/config/tls.py), so
that every bad value anywhere is reported the same way: one line, the dotted key, what is wrong.
"""

from __future__ import annotations

import os
import re
from typing import Any

MiB = 1024 * 1024


class ConfigError(ValueError):
    """A bad configuration: `key` is the dotted path, the message what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def mapping(raw: Any, key: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(key, f"must be a mapping, got {type(raw).__name__}")
    return raw


def only(raw: dict[str, Any], key: str, allowed: set[str]) -> None:
    for name in raw:
        if name not in allowed:
            known = ", ".join(sorted(allowed))
            where = f"{key}.{name}" if key else str(name)
            raise ConfigError(where, f"unknown key (known here: {known})")


def integer(raw: dict[str, Any], key: str, name: str, default: int, lo: int, hi: int) -> int:
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{key}.{name}", f"must be an integer from {lo} to {hi}, got {value!r}")
    return value


def number(raw: dict[str, Any], key: str, name: str, default: float, lo: float, hi: float) -> float:
    """An int or a float within [lo, hi] (seconds, fractions)."""
    value = raw.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ConfigError(f"{key}.{name}", f"must be a number from {lo} to {hi}, got {value!r}")
    return float(value)


def boolean(raw: dict[str, Any], key: str, name: str, default: bool) -> bool:
    value = raw.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}.{name}", f"must be true or false, got {value!r}")
    return value


def port(raw: dict[str, Any], key: str, name: str, default: int | None) -> int | None:
    value = raw.get(name, default)
    if value is None:  # set to null, or unset without a default: no such port
        return None
    return integer(raw, key, name, value, 1, 65535)


def string(raw: dict[str, Any], key: str, name: str, default: str | None) -> str | None:
    value = raw.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}.{name}", f"must be a non-empty string, got {value!r}")
    return value


def string_list(raw: dict[str, Any], key: str, name: str) -> tuple[str, ...]:
    """A list of non-empty strings; absent or null is the empty list."""
    value = raw.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{key}.{name}", f"must be a list, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{key}.{name}[{i}]", f"must be a non-empty string, got {item!r}")
    return tuple(value)


def existing_file(raw: dict[str, Any], key: str, name: str) -> str | None:
    path = string(raw, key, name, None)
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"{key}.{name}", f"no such file: {path}")
    return path


def choice(raw: dict[str, Any], key: str, name: str, default: str, choices: tuple[str, ...]) -> str:
    value = raw.get(name, default)
    if value not in choices:
        raise ConfigError(f"{key}.{name}", f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def size(raw: dict[str, Any], key: str, name: str, default: int) -> int:
    """A size: an integer of bytes, or a string like '8MiB', '512KiB', '10MB'."""
    value = raw.get(name, default)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*", value)
        if m is None:
            raise ConfigError(f"{key}.{name}", f"must be a size like 8MiB, got {value!r}")
        unit = {
            None: 1,
            "B": 1,
            "KB": 1000,
            "KiB": 1024,
            "MB": 1000**2,
            "MiB": MiB,
            "GB": 1000**3,
            "GiB": 1024**3,
        }
        value = int(m.group(1)) * unit[m.group(2)]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key}.{name}", f"must be a positive size, got {value!r}")
    return value
