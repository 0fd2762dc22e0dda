"""The zoo: one YAML recipe per row (:mod:`.recipes`), one strategy per kind of row (:mod:`.strategies`), stored
models (:mod:`.artifacts`), the runner (:mod:`.runner`) and the rendering of its results (:mod:`.results`).

Importing the package loads neither torch nor ONNX Runtime; ``Zoo`` and ``machine_info`` load the runner."""
from .recipes import (RECIPES_DIR, STRATEGIES, check_overrides, load_profile, load_recipes, load_reference,
                      resolve_recipe)
from .results import METRIC_LABEL, STRATEGY_LABEL, compare, render_zoo_md

__all__ = ["METRIC_LABEL", "RECIPES_DIR", "STRATEGIES", "STRATEGY_LABEL", "Zoo", "check_overrides", "compare",
           "load_profile", "load_recipes", "load_reference", "machine_info", "render_zoo_md", "resolve_recipe"]


def __getattr__(name: str):
    if name in ("Zoo", "machine_info"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
