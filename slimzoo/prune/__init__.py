"""Structured channel pruning: dependency-graph channel removal, sensitivity analysis, FLOPs-targeted ratios.

Task-agnostic: it sees a model, example inputs and an ``evaluate(model) -> float``; fine-tuning
afterwards is the task's own training loop (:func:`slimzoo.training.fit`).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import reject_unknown_keys
from ..errors import ConfigError
from .core import (
    IMPORTANCES,
    PruningRecord,
    apply_ratios,
    build_graph,
    channels_to_keep,
    prunable_groups,
    replay,
)
from .sensitivity import (
    SensitivityConfig,
    analyze_sensitivity,
    plot_sensitivity,
    ratios_for_threshold,
    search_threshold,
    uniform_ratio,
)

METHODS = ("sensitivity", "uniform")

__all__ = ["PruneConfig", "PruningRecord", "SensitivityConfig", "analyze_sensitivity", "apply_ratios",
           "build_graph", "channels_to_keep", "plot_sensitivity", "prunable_groups", "prune", "ratios_for_threshold",
           "replay", "search_threshold", "uniform_ratio"]


@dataclass
class PruneConfig:
    """What to prune: a FLOPs target, how per-layer ratios are chosen, and how channels are ranked."""

    flops_reduction: float = 0.5
    method: str = "sensitivity"  # sensitivity | uniform
    importance: str = "l1"  # l1 | fpgm
    round_to: int = 8
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)

    @classmethod
    def from_dict(cls, d: dict | None) -> PruneConfig:
        d = dict(reject_unknown_keys(cls, d, "pruning"))
        sens = d.pop("sensitivity", None)
        cfg = cls(**d)
        if isinstance(sens, SensitivityConfig):
            cfg.sensitivity = sens
        else:  # the sweep ranks channels the same way the final pruning does
            cfg.sensitivity = SensitivityConfig.from_dict(
                {"importance": cfg.importance, "round_to": cfg.round_to, **(sens or {})})
        if not 0 < cfg.flops_reduction < 1:
            raise ConfigError(f"flops_reduction must be in (0, 1), got {cfg.flops_reduction}")
        if cfg.method not in METHODS:
            raise ConfigError(f"pruning method must be one of {METHODS}, got {cfg.method!r}")
        if cfg.importance not in IMPORTANCES:
            raise ConfigError(f"importance must be one of {IMPORTANCES}, got {cfg.importance!r}")
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sensitivity"] = self.sensitivity.to_dict()
        return d


def prune(model: nn.Module, example_inputs: torch.Tensor, cfg: PruneConfig, *, evaluate=None,
          sensitivity_path: str | Path | None = None, metric_name: str = "metric", progress: bool = True
          ) -> tuple[nn.Module, PruningRecord, dict]:
    """A pruned copy of ``model`` that meets ``cfg.flops_reduction`` (before fine-tuning), its record and a summary.

    With ``method="sensitivity"`` the analysis is read from / written to ``sensitivity_path``
    (resuming if interrupted) and needs ``evaluate(model) -> float``.
    """
    info: dict = {"method": cfg.method, "target_flops_reduction": cfg.flops_reduction}
    if cfg.method == "sensitivity":
        if evaluate is None or sensitivity_path is None:
            raise ConfigError("sensitivity-chosen ratios need an evaluate function and a sensitivity file path")
        sens = analyze_sensitivity(model, example_inputs, evaluate, sensitivity_path, cfg.sensitivity,
                                   metric_name=metric_name, progress=progress)
        ratios, threshold, _ = search_threshold(model, example_inputs, sens, cfg.flops_reduction,
                                                round_to=cfg.round_to)
        info |= {"threshold": round(threshold, 6), "sensitivity_evaluations": sens["evaluations"],
                 "reference_evaluations": sens["reference_evaluations"]}
    else:
        ratios, _ = uniform_ratio(model, example_inputs, cfg.flops_reduction, round_to=cfg.round_to,
                                  ignored=cfg.sensitivity.ignored)
    pruned = copy.deepcopy(model)
    rec = apply_ratios(pruned, example_inputs, ratios, importance_name=cfg.importance, round_to=cfg.round_to)
    info["flops_reduction"] = round(1 - rec.flops[1] / rec.flops[0], 4)
    info["params_reduction"] = round(1 - rec.params[1] / rec.params[0], 4)
    return pruned.eval(), rec, info
