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


_EXEMPLARS = {"bool": False, "int": 0, "float": 0.0, "str": "", "dict": {}, "list": [], "tuple": ()}


def _field_ok(f: dataclasses.Field, value) -> bool:
    """``_type_ok`` against every type of a union annotation (``bool | str``, ``float | None``), else the default's."""
    parts = [t.strip() for t in str(f.type).split("|")]  # a string under `from __future__ import annotations`
    if len(parts) > 1 and all(t in _EXEMPLARS or t == "None" for t in parts):
        return any(value is None if t == "None" else _type_ok(value, _EXEMPLARS[t]) for t in parts)
    return _type_ok(value, _default(f))


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
        if not _field_ok(known[name], value):
            default, kind = _default(known[name]), known[name].type
            kind = str(kind) if "|" in str(kind) else type(default).__name__
            raise ConfigError(f"{what} setting {name!r} must be a {kind} (like {default!r}), got {value!r}")
    return d


MAX_YAML_BYTES = 1 << 20  # recipes and profiles are a few kB
MAX_YAML_ALIASES = 64  # anchors reused a few times are fine; a "billion laughs" document reuses them millions of times


def safe_yaml(text: str, where: str):
    """``yaml.safe_load`` with bounds: at most :data:`MAX_YAML_BYTES`, :data:`MAX_YAML_ALIASES` alias uses (each
    would be expanded when the data is copied or hashed), no nesting deep enough to exhaust the stack. Errors are
    ConfigErrors naming ``where``."""
    import yaml

    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} bytes of YAML, above the limit of {MAX_YAML_BYTES} (not a recipe?)")

    class _Bounded(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                type(self).aliases += 1
                if type(self).aliases > MAX_YAML_ALIASES:
                    raise ConfigError(f"{where}: more than {MAX_YAML_ALIASES} YAML aliases (*name); write the values "
                                      "out instead")
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=_Bounded)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply") from None


def safe_json(text: str, where: str, error=ConfigError):
    """``json.loads`` whose errors (malformed, nested too deeply) are ``error`` naming ``where``."""
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
