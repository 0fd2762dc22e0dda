"""Building config dataclasses from recipe/JSON dicts, with clear errors for unknown keys and wrong types."""
from __future__ import annotations

import dataclasses
from dataclasses import fields

from .errors import ConfigError


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type_ok(value, default) -> bool:
    """Is ``value`` acceptable where the field's default is ``default``? (YAML gives lists for tuples, ints for
    floats; a nested config dataclass is given as a mapping.)"""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if dataclasses.is_dataclass(default):
        return isinstance(value, dict) or isinstance(value, type(default))
    return isinstance(value, type(default))


def reject_unknown_keys(cls, d: dict | None, what: str) -> dict:
    """A copy of ``d``, or a ConfigError naming the keys that ``cls`` does not have or values of the wrong type."""
    if d is not None and not isinstance(d, dict):
        raise ConfigError(f"{what} settings must be a mapping of name: value, got {d!r}")
    d = dict(d or {})
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(f"unknown {what} setting(s) {sorted(map(str, unknown))}; known: {sorted(known)}")
    for name, value in d.items():
        default = _default(known[name])
        if not _type_ok(value, default):
            raise ConfigError(f"{what} setting {name!r} must be a {type(default).__name__} "
                              f"(like {default!r}), got {value!r}")
    return d
