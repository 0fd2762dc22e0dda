"""Zoo recipes: one YAML file per row, checked on load, merged with a profile and the user's overrides.

A row recipe names its task, model, dataset and strategy (``none`` = the FP32 baseline, ``quant``, ``qat``,
``prune``) and, for a compressed row, the ``base`` row it compresses; the sections ``train``, ``finetune``,
``quant``, ``qat`` and ``prune`` are checked by the library's config classes. A profile (``profiles.yaml``) overrides
settings in every row; a recipe's own ``profiles:`` entry overrides them for one row; ``--set`` last of all.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path

from ..config import safe_yaml
from ..errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent.parent.parent / "recipes"
STRATEGIES = ("none", "quant", "qat", "prune")
ROW_KEYS = {"id", "task", "model", "dataset", "strategy", "base", "train", "quant", "qat", "prune", "finetune",
            "image_size", "bench_size", "num_classes", "description", "backbone_from", "analyze_layers", "anchors"}
ROW_TYPES = {"base": (str,), "train": (dict,), "quant": (dict,), "qat": (dict,), "prune": (dict,),
             "finetune": (dict,), "image_size": (int,), "bench_size": (int,), "num_classes": (int,),
             "description": (str,), "backbone_from": (str,), "analyze_layers": (bool, int), "profiles": (dict,),
             "anchors": (str, list)}
FIXED_KEYS = {"id", "task", "strategy", "base"}  # a profile or --set cannot change what a row is
ROW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a row id names files under OUT: no separators, no '..'
SECTIONS = {"train": "TrainConfig", "finetune": "TrainConfig", "quant": "PTQConfig", "qat": "QATConfig",
            "prune": "PruneConfig"}


def config_hash(obj) -> str:
    """The short hash that keys every stored artifact (models, rows, data) by the configs that produce it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    data = safe_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def check_id(row_id, where: str) -> None:
    if not isinstance(row_id, str) or not ROW_ID.fullmatch(row_id) or ".." in row_id:
        raise ConfigError(f"{where}: row id {row_id!r} must be letters, digits, '.', '_' or '-' (it names files "
                          "under the output folder: no path separators, no '..')")


def section_config(section: str):
    """The config class that reads a recipe section (``train`` -> TrainConfig, ...)."""
    from ..prune import PruneConfig
    from ..quant import PTQConfig
    from ..quant.qat import QATConfig
    from ..training import TrainConfig

    return {"TrainConfig": TrainConfig, "PTQConfig": PTQConfig, "QATConfig": QATConfig,
            "PruneConfig": PruneConfig}[SECTIONS[section]]


def _check_row(r: dict, p: Path) -> None:
    unknown = set(r) - ROW_KEYS - {"profiles"}
    if unknown:
        raise ConfigError(f"{p}: unknown key(s) {sorted(unknown)}; known: {sorted(ROW_KEYS | {'profiles'})}")
    for key in ("id", "task", "model", "dataset", "strategy"):
        if not isinstance(r.get(key), str):
            raise ConfigError(f"{p}: key {key!r} must be a string")
    for key, value in r.items():
        kind = ROW_TYPES.get(key)
        if kind and not (isinstance(value, kind) and not (isinstance(value, bool) and bool not in kind)):
            names = " or ".join(k.__name__ for k in kind)
            raise ConfigError(f"{p}: key {key!r} must be a {names}, got {value!r}")
    if r["task"] not in ("classification", "detection", "segmentation"):
        raise ConfigError(f"{p}: task {r['task']!r} not one of classification, detection, segmentation")
    if r["strategy"] not in STRATEGIES:
        raise ConfigError(f"{p}: strategy {r['strategy']!r} not one of {STRATEGIES}")
    if r["strategy"] != "none" and not isinstance(r.get("base"), str):
        raise ConfigError(f"{p}: a compressed row needs 'base: <id of the row it compresses>'")
    check_id(r["id"], str(p))


def load_recipes(recipes_dir: str | Path = RECIPES_DIR) -> dict[str, dict]:
    """All row recipes (``*.yaml`` except ``profiles.yaml``), checked for unknown keys and wrong types."""
    recipes = {}
    for p in sorted(Path(recipes_dir).glob("*.yaml")):
        if p.name in ("profiles.yaml", "reference.yaml"):
            continue
        r = read_yaml(p)
        _check_row(r, p)
        if r["id"] in recipes:
            raise ConfigError(f"{p}: duplicate row id {r['id']!r}")
        r["_file"] = str(p)
        recipes[r["id"]] = r
    for r in recipes.values():
        if r.get("base") and r["base"] not in recipes:
            raise ConfigError(f"{r['_file']}: base row {r['base']!r} not found")
        if r.get("base") and recipes[r["base"]]["strategy"] not in ("none", "prune"):
            raise ConfigError(f"{r['_file']}: base row {r['base']!r} has no PyTorch model to compress "
                              "(a base must be an FP32 'none' row or a 'prune' row)")
        if r["strategy"] == "prune" and recipes[r["base"]]["strategy"] != "none":
            raise ConfigError(f"{r['_file']}: a prune row's base must be an FP32 'none' row")
    return recipes


def check_overrides(overrides: dict, where: str = "--set") -> None:
    """Refuse settings that no row would read: unknown top-level keys, unknown keys or bad values of a section
    (checked by the section's config class), and an attempt to change row ids, tasks or chains."""
    unknown = set(overrides) - (ROW_KEYS - FIXED_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown or fixed recipe key(s) {sorted(unknown)}; settable: "
                          f"{sorted(ROW_KEYS - FIXED_KEYS)}")
    for key, value in overrides.items():
        kind = ROW_TYPES.get(key)
        if kind and not isinstance(value, kind):
            raise ConfigError(f"{where}: {key} must be a {' or '.join(k.__name__ for k in kind)}, got {value!r}")
        if key in SECTIONS:
            section_config(key).from_dict(value)  # raises a ConfigError naming unknown keys or bad values


def load_profile(name: str, recipes_dir: str | Path = RECIPES_DIR) -> dict:
    """A named profile from ``profiles.yaml`` (overrides merged into every recipe)."""
    profiles = read_yaml(Path(recipes_dir) / "profiles.yaml")
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r}; known: {sorted(profiles)}")
    return profiles[name]


def resolve_recipe(recipe: dict, profile: dict, profile_name: str, overrides: dict | None = None) -> dict:
    """The recipe, overridden by the profile's row settings, then by the recipe's own per-profile overrides, then
    by ``overrides``. Ids, tasks, strategies and bases stay the recipe's own."""
    r = {k: v for k, v in recipe.items() if k not in ("profiles", "_file")}
    r = deep_merge(r, profile.get("rows", {}))
    r = deep_merge(r, recipe.get("profiles", {}).get(profile_name, {}))
    scale = profile.get("epochs_scale")
    if scale and "train" in r and "epochs" in r["train"]:
        r["train"]["epochs"] = max(1, round(r["train"]["epochs"] * scale))
    r = deep_merge(r, overrides) if overrides else r
    changed = sorted(k for k in FIXED_KEYS if r.get(k) != recipe.get(k))
    if changed:
        raise ConfigError(f"{recipe.get('_file', recipe['id'])}: a profile or override changes {changed} "
                          f"(e.g. {changed[0]} to {r.get(changed[0])!r}); these are fixed by the recipe")
    return r


def resolved_configs(r: dict, where: str | None = None) -> dict:
    """A row's configs with the library's defaults filled in, so a changed default reruns the rows it affects;
    errors name ``where`` (the recipe file)."""
    try:
        if r["strategy"] == "prune":
            return {"prune": section_config("prune").from_dict(r.get("prune")).to_dict(),
                    "finetune": section_config("finetune").from_dict(r.get("finetune")).to_dict()}
        section = {"quant": "quant", "qat": "qat"}.get(r["strategy"], "train")
        return section_config(section).from_dict(r.get(section)).to_dict()
    except ConfigError as e:
        raise ConfigError(f"{where or r['id']}: {e}") from None


def load_reference(recipes_dir: str | Path = RECIPES_DIR) -> dict[str, dict]:
    """The reference's own figures by row id (``reference.yaml``), or {} if there is none."""
    p = Path(recipes_dir) / "reference.yaml"
    return read_yaml(p) if p.is_file() else {}
