"""Building config dataclasses from recipe/JSON dicts."""
from __future__ import annotations

from dataclasses import fields

from .errors import ConfigError


def reject_unknown_keys(cls, d: dict | None, what: str) -> dict:
    """A copy of ``d``, or a ConfigError naming the keys that ``cls`` does not have."""
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown {what} setting(s) {sorted(unknown)}; known: {sorted(known)}")
    return d
