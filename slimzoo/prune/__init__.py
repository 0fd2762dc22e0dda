"""Structured channel pruning: dependency-graph channel removal, sensitivity analysis, FLOPs-targeted ratios.

Task-agnostic: it sees a model, example inputs and an ``evaluate(model) -> float``; fine-tuning
afterwards is the task's own training loop (:func:`slimzoo.training.fit`).
"""
from __future__ import annotations

import copy
import sys
import types
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import reject_unknown_keys
from ..errors import ConfigError
from .core import (
    IMPORTANCES,
    PrunedForwardError,
    PruningRecord,
    analyze_groups,
    apply_ratios,
    build_graph,
    channels_to_keep,
    find_broken_groups,
    prunable_groups,
    replay,
)
from .sensitivity import (
    SensitivityConfig,
    SensitivityExtrapolationWarning,
    analyze_sensitivity,
    plot_sensitivity,
    ratios_for_threshold,
    search_threshold,
    uniform_ratio,
)

METHODS = ("sensitivity", "uniform")

__all__ = ["PruneConfig", "PruneResult", "PruningRecord", "SensitivityConfig", "SensitivityExtrapolationWarning",
           "analyze_groups", "analyze_sensitivity", "apply_ratios", "build_graph", "channels_to_keep",
           "plot_sensitivity", "prunable_groups", "prune", "ratios_for_threshold", "replay", "search_threshold",
           "uniform_ratio"]


@dataclass
class PruneConfig:
    """What to prune: a FLOPs target, how per-layer ratios are chosen, and how channels are ranked."""

    flops_reduction: float = 0.5
    method: str = "sensitivity"  # sensitivity | uniform
    importance: str = "l1"  # l1 | fpgm
    round_to: int = 8  # preferred channel multiple; finer where 8 cannot meet the target within 2 points
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    ignored: tuple[str, ...] = ()  # PyTorch module names never pruned (with the groups they produce)

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
        return cfg

    def __post_init__(self):  # checked however the config is built (API, CLI, recipe)
        if isinstance(self.flops_reduction, bool) or not isinstance(self.flops_reduction, (int, float)) \
                or not 0 < self.flops_reduction < 1:
            raise ConfigError(f"flops_reduction must be in (0, 1), got {self.flops_reduction!r}")
        if self.method not in METHODS:
            raise ConfigError(f"pruning method must be one of {METHODS}, got {self.method!r}")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"importance must be one of {IMPORTANCES}, got {self.importance!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {self.round_to!r}")
        if isinstance(self.ignored, str):
            raise ConfigError(f"ignored must be a list of layer names, got {self.ignored!r}")
        self.ignored = tuple(self.ignored)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sensitivity"] = self.sensitivity.to_dict()
        return d


def prune(model: nn.Module, example_inputs: torch.Tensor, cfg: PruneConfig, *, evaluate=None,
          sensitivity_path: str | Path | None = None, metric_name: str = "metric", progress: bool = True,
          ignored: list[str] | tuple[str, ...] | None = None) -> PruneResult:
    """A pruned copy of ``model`` that meets ``cfg.flops_reduction`` (before fine-tuning), its record and a summary.

    With ``method="sensitivity"`` the analysis is read from / written to ``sensitivity_path``
    (resuming if interrupted) and needs ``evaluate(model) -> float``. ``ignored`` (or ``cfg.ignored``) names
    layers never pruned. The summary says which layer groups were left unpruned and why (``left_unpruned``),
    and, when the FLOPs reached miss the target by more than 2 points, by how much (``target_missed_by``,
    also a :class:`PruningTargetWarning`).
    """
    info: dict = {"method": cfg.method, "target_flops_reduction": cfg.flops_reduction}
    ignored = tuple(dict.fromkeys((*cfg.sensitivity.ignored, *cfg.ignored, *(ignored or ()))))
    if ignored != tuple(cfg.sensitivity.ignored):
        cfg = copy.deepcopy(cfg)
        cfg.sensitivity.ignored = ignored
    groups, left_out = analyze_groups(model, build_graph(model, example_inputs), list(ignored))
    if not groups:
        raise ConfigError(f"{type(model).__name__}: no layer can be pruned: "
                          + "; ".join(f"{k}: {v}" for k, v in list(left_out.items())[:5]))
    sens = None
    if cfg.method == "sensitivity":
        if evaluate is None or sensitivity_path is None:
            raise ConfigError("sensitivity-chosen ratios need an evaluate function and a sensitivity file path")
        sens = analyze_sensitivity(model, example_inputs, evaluate, sensitivity_path, cfg.sensitivity,
                                   metric_name=metric_name, progress=progress)
        info |= {"sensitivity_evaluations": sens["evaluations"], "reference_evaluations": sens["reference_evaluations"]}
    broken = {n: e["broken"] for n, e in (sens or {}).get("layers", {}).items() if "broken" in e}
    for attempt in range(MAX_RETRIES + 1):
        try:
            ratios, round_to, threshold = _choose_ratios(model, example_inputs, cfg, sens, ignored)
            pruned = copy.deepcopy(model)
            rec = apply_ratios(pruned, example_inputs, ratios, importance_name=cfg.importance, round_to=round_to)
            break
        except PrunedForwardError as e:
            # some group uses a channel count Torch-Pruning cannot see: find which, leave it whole, choose again
            found = find_broken_groups(model, example_inputs, e.ratios, importance_name=cfg.importance,
                                       round_to=e.round_to, counting=e.counting,
                                       alone=attempt == 0)  # then one culprit per failure, bisected
            if not found or attempt == MAX_RETRIES:
                raise
            broken |= found
            ignored = (*ignored, *found)
            if sens is not None:
                sens = {**sens, "layers": {n: entry for n, entry in sens["layers"].items() if n not in found}}
        except ConfigError as e:  # a target out of reach: say which groups had to be left whole, and why
            if not broken:
                raise
            raise ConfigError(f"{e}. {len(broken)} layer group(s) are left whole because pruning them breaks the "
                              f"model's forward pass (a fixed channel count Torch-Pruning cannot see: "
                              f"{', '.join(list(broken)[:4])}{' ...' if len(broken) > 4 else ''})") from None
    left_out |= {n: why for n, why in broken.items() if n not in rec.ratios}
    if threshold is not None:
        info["threshold"] = round(threshold, 6)
    info["flops_reduction"] = round(1 - rec.flops[1] / rec.flops[0], 4)
    info["params_reduction"] = round(1 - rec.params[1] / rec.params[0], 4)
    info["round_to"] = round_to
    if left_out:
        info["left_unpruned"] = left_out
    gap = info["flops_reduction"] - cfg.flops_reduction
    if abs(gap) > TARGET_TOLERANCE:
        info["target_missed_by"] = round(gap, 4)
        warnings.warn(f"{type(model).__name__}: asked for -{cfg.flops_reduction:.1%} FLOPs, reached "
                      f"-{info['flops_reduction']:.1%} ({gap:+.1%}): the channel granularity (grouped convolutions, "
                      f"at least one channel per layer, {len(left_out)} layer group(s) left unpruned) allows no "
                      "closer", PruningTargetWarning, stacklevel=2)
    return PruneResult(pruned.eval(), rec, info)


@dataclass
class PruneResult:
    """The pruned model (before fine-tuning), its replayable record and a summary (FLOPs and params removed,
    ``left_unpruned`` layers with reasons, ``target_missed_by`` where the target could not be met). Unpacks as
    ``model, record, info``."""

    model: nn.Module
    record: PruningRecord
    info: dict

    def __iter__(self):
        return iter((self.model, self.record, self.info))


class _CallablePackage(types.ModuleType):
    """``slimzoo.prune(model, ...)`` is :func:`prune`, while ``slimzoo.prune.PruneConfig`` stays importable."""

    def __call__(self, *args, **kwargs) -> PruneResult:
        return prune(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

TARGET_TOLERANCE = 0.02  # FLOPs reduction reached within 2 points of the asked one
MAX_RETRIES = 12  # choices of ratios that broke the forward pass, each followed by leaving the culprits whole


class PruningTargetWarning(UserWarning):
    """The FLOPs reduction reached differs from the asked one by more than TARGET_TOLERANCE."""


def _choose_ratios(model: nn.Module, example_inputs: torch.Tensor, cfg: PruneConfig, sens: dict | None,
                   ignored: tuple[str, ...]) -> tuple[dict[str, float], int, float | None]:
    """(ratios, round_to, threshold): the coarsest channel rounding (at most cfg.round_to) that lands within
    TARGET_TOLERANCE of the target (rounding to 8 overshoots on thin layers: a -30% request became -43% on a small
    net), else the closest."""
    best = None
    for round_to in _round_to_candidates(cfg.round_to):
        if sens is not None:
            ratios, threshold, reached = search_threshold(model, example_inputs, sens, cfg.flops_reduction,
                                                          round_to=round_to)
        else:
            (ratios, reached), threshold = uniform_ratio(model, example_inputs, cfg.flops_reduction,
                                                         round_to=round_to, ignored=ignored), None
        if best is None or abs(reached - cfg.flops_reduction) < abs(best[2] - cfg.flops_reduction):
            best = (ratios, round_to, reached, threshold)
        if abs(reached - cfg.flops_reduction) <= TARGET_TOLERANCE:
            break
    return best[0], best[1], best[3]


def _round_to_candidates(round_to: int) -> list[int]:
    out = [round_to]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out
