"""Sensitivity analysis and ratio selection for a FLOPs target.

Each prunable group is pruned alone at a few ratios and the relative metric loss
``(base - metric) / base`` recorded. Three ideas keep it cheap compared with the reference's
nine full evaluations per layer:

* a coarse sweep (default ratios 0.25 / 0.5 / 0.75); the loss in between is interpolated
  linearly from (0, 0) through the measured points, and a ratio beyond the last measured one is
  never chosen;
* ratios that round to the same channel count (``round_to``) share one evaluation;
* a layer's sweep stops once its loss passes ``stop_loss``, the largest loss that can matter.

Evaluation runs on a fixed subset of the validation data (``evaluate`` decides; the CLI and zoo
pass a ``limit``). The result is a readable JSON file, rewritten atomically after every
evaluation so that an interrupted analysis resumes where it stopped.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import reject_unknown_keys
from ..errors import ConfigError
from ..storage import read_json, write_json
from .core import (
    BROKEN,
    IMPORTANCES,
    FlopsAfter,
    PrunedForwardError,
    apply_ratios,
    build_graph,
    channels_to_keep,
    prunable_groups,
)

REFERENCE_EVALS_PER_LAYER = 9  # PaddleSlim: ratios 0.1 .. 0.9, a full evaluation each


@dataclass
class SensitivityConfig:
    """How the sensitivity of each prunable group is measured."""

    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    stop_loss: float = 0.2  # stop a layer's sweep once its relative loss passes this
    importance: str = "l1"
    round_to: int = 8
    eval_images: int = 500  # validation images per evaluation (the zoo and CLI pass this as a limit)
    ignored: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, d: dict | None) -> SensitivityConfig:
        return cls(**reject_unknown_keys(cls, d, "sensitivity"))

    def __post_init__(self):  # checked however the config is built (API, CLI, recipe)
        try:
            self.ratios = tuple(sorted(float(r) for r in self.ratios))
        except (TypeError, ValueError):
            raise ConfigError(f"sensitivity ratios must be numbers, got {self.ratios!r}") from None
        if isinstance(self.ignored, str):
            raise ConfigError(f"ignored must be a list of layer names, got {self.ignored!r}")
        self.ignored = tuple(self.ignored)
        if not self.ratios or not all(0 < r < 1 for r in self.ratios):
            raise ConfigError(f"sensitivity ratios must lie in (0, 1), got {self.ratios}")
        if self.importance not in IMPORTANCES:
            raise ConfigError(f"importance must be one of {IMPORTANCES}, got {self.importance!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be >= 1, got {self.round_to!r}")
        if not isinstance(self.eval_images, int) or self.eval_images < 1:
            raise ConfigError(f"eval_images must be a positive integer, got {self.eval_images!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratios"], d["ignored"] = list(self.ratios), list(self.ignored)
        return d


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every tensor in the state_dict: a resumed analysis must be of the same weights."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def analyze_sensitivity(model: nn.Module, example_inputs: torch.Tensor, evaluate: Callable[[nn.Module], float],
                        out_path: str | Path, cfg: SensitivityConfig | None = None, *, metric_name: str = "metric",
                        progress: bool = True) -> dict:
    """Measure each group's loss vs pruning ratio into ``out_path`` (JSON), resuming a matching earlier run.

    ``evaluate(model) -> float`` returns the task metric (higher is better) of a model.
    """
    from tqdm import tqdm

    cfg = cfg or SensitivityConfig()
    out_path = Path(out_path)
    dg = build_graph(model, example_inputs)
    groups = prunable_groups(model, dg, list(cfg.ignored))
    if not groups:
        raise ConfigError(f"{type(model).__name__}: no prunable layer groups found")
    from .. import distributed

    fp = model_fingerprint(model)
    rank, world = distributed.rank(), distributed.world_size()
    part_path = out_path if world == 1 else out_path.with_name(f"{out_path.stem}.rank{rank}{out_path.suffix}")
    res = _load_matching(out_path, fp, cfg)
    if not res:
        res = {"version": 1, "model": type(model).__name__, "fingerprint": fp, "config": cfg.to_dict(),
               "metric": metric_name, "base_metric": None, "evaluations": 0,
               "reference_evaluations": REFERENCE_EVALS_PER_LAYER * len(groups),
               "layers": {g.name: {"channels": g.channels, "coupled": g.layers, "points": [], "done": False}
                          for g in groups}}
    for part in sorted(out_path.parent.glob(f"{out_path.stem}.rank*{out_path.suffix}")):
        _merge(res, _load_matching(part, fp, cfg))  # finished work of an interrupted multi-process run
    if res["base_metric"] is None:
        with distributed.local():  # every rank needs it; counted once
            res["base_metric"] = float(evaluate(model))
        res["evaluations"] = 1 + _evaluated_points(res)
        write_json(part_path, res)
    base = res["base_metric"]
    # under torchrun each rank owns every world-th group (fixed by position, not by what is left, so ranks that
    # start at different times, or read each other's finished parts, still split the same way)
    todo = [g for i, g in enumerate(groups) if i % world == rank and not res["layers"][g.name]["done"]]
    bar = tqdm(todo, desc="sensitivity", disable=None if progress and distributed.is_main() else True)
    for g in bar:
        entry = res["layers"][g.name]
        done_ratios = {p["ratio"] for p in entry["points"]}
        for ratio in cfg.ratios:
            if ratio in done_ratios:
                continue
            keep = channels_to_keep(g.channels, ratio, cfg.round_to)
            same = next((p for p in entry["points"] if p["keep"] == keep), None)
            if keep >= g.channels:
                point = {"ratio": ratio, "keep": keep, "metric": base, "loss": 0.0, "evaluated": False}
            elif same is not None:
                point = {**same, "ratio": ratio, "evaluated": False}
            else:
                bar.set_postfix(layer=g.name[-24:], ratio=ratio)
                m = copy.deepcopy(model)
                try:
                    apply_ratios(m, example_inputs, {g.name: ratio}, importance_name=cfg.importance,
                                 round_to=cfg.round_to, measure=False)
                except PrunedForwardError as e:  # recorded: the group is never chosen, and prune() reports why
                    entry["broken"] = BROKEN.format(e.cause)
                    break
                with distributed.local():  # ranks evaluate different models: no sharding, no reduction
                    value = float(evaluate(m))
                point = {"ratio": ratio, "keep": keep, "metric": value,
                         "loss": (base - value) / abs(base) if base else base - value, "evaluated": True}
                res["evaluations"] += 1
            entry["points"].append(point)
            write_json(part_path, res)  # after every evaluation: an interrupted run resumes here
            if point["loss"] > cfg.stop_loss:
                break
        entry["done"] = True
        write_json(part_path, res)
    if world > 1:  # merge every rank's groups into one file, written by rank 0
        for part in distributed.all_gather_list([{n: e for n, e in res["layers"].items() if e["done"]}]):
            _merge(res, {"layers": part})
        res["evaluations"] = 1 + _evaluated_points(res)
        if distributed.is_main():
            write_json(out_path, res)
        distributed.barrier()
        part_path.unlink(missing_ok=True)
    return res


def finished_analysis(path: str | Path, model: nn.Module) -> dict:
    """A finished sensitivity analysis of exactly these weights, read from ``path``; a ConfigError otherwise."""
    sens = read_json(path)
    if not isinstance(sens, dict) or sens.get("fingerprint") != model_fingerprint(model) or not all(
            e.get("done") for e in sens.get("layers", {}).values()):
        raise ConfigError(f"{path}: measured on other weights or unfinished; rerun `slimzoo sensitivity` "
                          "on this model (it resumes an unfinished file)")
    return sens


def _load_matching(path: Path, fp: str, cfg: SensitivityConfig) -> dict | None:
    """The analysis stored at ``path`` if it is of these weights and this config, else None."""
    res = read_json(path) if path.is_file() else None
    return res if res and res.get("fingerprint") == fp and res.get("config") == cfg.to_dict() else None


def _merge(res: dict, other: dict | None) -> None:
    """Take ``other``'s entry for a group where it is further along (done, or more points)."""
    if not other:
        return
    if res.get("base_metric") is None and other.get("base_metric") is not None:
        res["base_metric"] = other["base_metric"]
    for name, e in other.get("layers", {}).items():
        mine = res["layers"].get(name)
        if mine is not None and (e["done"], len(e["points"])) > (mine["done"], len(mine["points"])):
            res["layers"][name] = e
    res["evaluations"] = (1 if res.get("base_metric") is not None else 0) + _evaluated_points(res)


def _evaluated_points(res: dict) -> int:
    return sum(p.get("evaluated", True) for e in res["layers"].values() for p in e["points"])


def loss_at(entry: dict, ratio: float, extrapolate: bool = False) -> float | None:
    """Loss at ``ratio``, linearly interpolated from (0, 0) through the measured points; None beyond them, or with
    ``extrapolate`` continued past the last point at the steeper of the last segment's slope and the chord's from
    (0, 0) (a guess, never below the measured trend)."""
    pts = [(0.0, 0.0)] + sorted((p["ratio"], p["loss"]) for p in entry["points"])
    if ratio > pts[-1][0] + 1e-9:
        if not extrapolate or len(pts) < 2:
            return None
        (r0, l0), (r1, l1) = pts[-2], pts[-1]
        slope = max((l1 - l0) / (r1 - r0) if r1 > r0 else 0.0, l1 / r1 if r1 > 0 else 0.0, 0.0)
        return l1 + slope * (ratio - r1)
    for (r0, l0), (r1, l1) in itertools.pairwise(pts):
        if ratio <= r1 + 1e-9:
            return l0 + (l1 - l0) * (ratio - r0) / (r1 - r0) if r1 > r0 else l1
    return pts[-1][1]


def ratios_for_threshold(sens: dict, threshold: float, step: float = 0.05,
                         extrapolate: bool = False) -> dict[str, float]:
    """Per group, the largest ratio (on a ``step`` grid) up to which the loss stays at or under ``threshold``
    (``extrapolate``: also past the measured ratios, as :func:`loss_at` guesses)."""
    grid = [round(i * step, 4) for i in range(1, round(1 / step))]
    out = {}
    for name, entry in sens["layers"].items():
        best = 0.0
        for r in grid:
            loss = loss_at(entry, r, extrapolate and "broken" not in entry)  # no guess past a ratio that broke
            if loss is None or loss > threshold:
                break
            best = r
        if best > 0:
            out[name] = best
    return out


def _reduction(flops0: int, flops1: int) -> float:
    return 1.0 - flops1 / flops0


def search_threshold(model: nn.Module, example_inputs: torch.Tensor, sens: dict, flops_reduction: float, *,
                     round_to: int = 8, iters: int = 24) -> tuple[dict[str, float], float, float]:
    """Binary-search the loss threshold until the chosen ratios remove ``flops_reduction`` of the FLOPs.

    Returns (ratios, threshold, achieved reduction); the smallest threshold that reaches the target.
    """
    from ..bench import count_flops_params

    flops0 = count_flops_params(model, example_inputs)[0]
    flops = FlopsAfter(model, example_inputs, round_to)
    losses = [p["loss"] for e in sens["layers"].values() for p in e["points"]]
    hi = max(losses + [0.0]) + 1e-6
    ratios = ratios_for_threshold(sens, hi)
    best = (ratios, hi, _reduction(flops0, flops(ratios)))
    measured = best[2]
    extrapolate = measured < flops_reduction
    if extrapolate:  # the measured ratios do not reach the target: continue each layer's curve past its last point
        hi = max([loss_at(e, 0.95, True) or 0.0 for e in sens["layers"].values()] + [hi]) + 1e-6
        ratios = ratios_for_threshold(sens, hi, extrapolate=True)
        best = (ratios, hi, _reduction(flops0, flops(ratios)))
        if best[2] < flops_reduction:
            raise ConfigError(f"the sensitivity file allows at most {measured:.1%} FLOPs reduction (every layer at "
                              f"its largest measured ratio; {best[2]:.1%} with every layer at 95%), short of "
                              f"{flops_reduction:.1%}; ask for less, or prune layers now ignored")
    lo = -1e-9
    below = ({}, 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        ratios = ratios_for_threshold(sens, mid, extrapolate=extrapolate)
        red = _reduction(flops0, flops(ratios))
        if red >= flops_reduction:
            hi, best = mid, (ratios, mid, red)
        else:
            lo, below = mid, (ratios, red)
        if hi - lo < 1e-5:
            break
    ratios, red = refine_to_target(model, example_inputs, below, best[0::2], flops_reduction, flops0,
                                   round_to=round_to, flops=flops)
    if extrapolate:
        past = {n: r for n, r in ratios.items() if r > max(p["ratio"] for p in sens["layers"][n]["points"]) + 1e-9}
        if past:
            named = ", ".join(f"{n} {r:.2f}" for n, r in list(past.items())[:4]) + (" ..." if len(past) > 4 else "")
            warnings.warn(f"-{flops_reduction:.1%} FLOPs needs more than the measured ratios allow ({measured:.1%} "
                          f"with every layer at its largest): {len(past)} group(s) pruned past their last measured "
                          f"ratio on extrapolated losses ({named}); measure larger ratios (--ratios) or a higher stop "
                          "loss to choose them on measured losses", SensitivityExtrapolationWarning, stacklevel=3)
    return ratios, best[1], red


class SensitivityExtrapolationWarning(UserWarning):
    """The FLOPs target needed pruning ratios past those the sensitivity analysis measured."""


def refine_to_target(model: nn.Module, example_inputs: torch.Tensor, below: tuple[dict, float],
                     above: tuple[dict, float], target: float, flops0: int, *, round_to: int = 8,
                     tolerance: float = 0.02, flops: FlopsAfter | None = None) -> tuple[dict[str, float], float]:
    """Ratios between two neighbouring choices (one short of ``target``, one past it) that land closest to it.

    One step of a ratio (or of the sensitivity threshold) moves every layer at once, and with channels rounded
    to 8, or grouped convolutions losing a channel per group, that step can be many FLOPs points. Here the layers
    take the larger ratio one at a time, in network order, binary-searched on the count; then the layer whose
    switch crosses the target takes the ratio between its two that lands closest (one layer's whole step can be
    several points on a network with a few heavy layers).
    """
    (lo_ratios, lo_red), (hi_ratios, hi_red) = below, above
    if hi_red - target <= tolerance / 2 or not lo_ratios and not hi_ratios:
        return hi_ratios, hi_red
    if flops is None:
        flops = FlopsAfter(model, example_inputs, round_to)
    names = [n for n in hi_ratios if hi_ratios[n] != lo_ratios.get(n, 0.0)]

    def mixed(k: int) -> dict[str, float]:
        out = {n: r for n, r in lo_ratios.items() if r > 0}
        out.update({n: hi_ratios[n] for n in names[:k]})
        return out

    best = min([(lo_ratios, lo_red), (hi_ratios, hi_red)], key=lambda p: abs(p[1] - target))
    best, _, b = _bisect_closest(mixed, 0, len(names), target, flops0, flops, best, integer=True)
    if names:  # the layer whose switch crosses the target may land closer at a ratio between its two
        name, base = names[b - 1], mixed(b - 1)
        best, _, _ = _bisect_closest(lambda x: {**base, name: round(x, 4)}, lo_ratios.get(name, 0.0),
                                     hi_ratios[name], target, flops0, flops, best, integer=False)
    return best


def _bisect_closest(choice, lo, hi, target: float, flops0: int, flops, best: tuple, *, integer: bool,
                    steps: int = 8) -> tuple[tuple, float, float]:
    """Bisect the parameter of ``choice(x) -> ratios`` between ``lo`` (short of ``target``) and ``hi`` (past it;
    larger values remove more FLOPs): an integer down to neighbours, a float for ``steps`` halvings. Returns the
    (ratios, reduction) closest to the target seen, ``best`` included, and the final bounds."""
    done = 0
    while hi - lo > 1 if integer else done < steps:
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        r = choice(mid)
        red = _reduction(flops0, flops(r))
        if abs(red - target) < abs(best[1] - target):
            best = (r, red)
        if red >= target:
            hi = mid
        else:
            lo = mid
        done += 1
    return best, lo, hi


def uniform_ratio(model: nn.Module, example_inputs: torch.Tensor, flops_reduction: float, *, round_to: int = 8,
                  ignored: tuple[str, ...] = (), iters: int = 12) -> tuple[dict[str, float], float]:
    """The same ratio for every prunable group, binary-searched to reach ``flops_reduction``."""
    from ..bench import count_flops_params

    dg = build_graph(model, example_inputs)
    names = [g.name for g in prunable_groups(model, dg, list(ignored))]
    flops0 = count_flops_params(model, example_inputs)[0]
    flops = FlopsAfter(model, example_inputs, round_to, dg=dg)
    lo, hi = 0.0, 0.95
    best, below = None, ({}, 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        ratios = dict.fromkeys(names, round(mid, 4))
        red = _reduction(flops0, flops(ratios))
        if red >= flops_reduction:
            hi, best = mid, (ratios, red)
        else:
            lo, below = mid, (ratios, red)
    if best is None:
        raise ConfigError(f"uniform pruning cannot remove {flops_reduction:.1%} of the FLOPs (every prunable layer "
                          f"at 95% reaches {below[1]:.1%}); ask for less, or prune layers now ignored")
    return refine_to_target(model, example_inputs, below, best, flops_reduction, flops0, round_to=round_to,
                            flops=flops)


def draw_sensitivity(sens: dict, ax, legend: bool = True) -> None:
    """Relative metric loss vs pruning ratio on ``ax``, one line per prunable group (measured points marked)."""
    import matplotlib.pyplot as plt

    layers = sens["layers"]
    cmap = plt.get_cmap("viridis")
    for i, (name, e) in enumerate(layers.items()):
        pts = [(0.0, 0.0)] + sorted((p["ratio"], 100 * p["loss"]) for p in e["points"])
        ax.plot(*zip(*pts), "-o", ms=3, lw=1, color=cmap(i / max(1, len(layers) - 1)),
                label=f"{name} ({e['channels']})")
    ax.axhline(100 * sens["config"]["stop_loss"], color="grey", ls="--", lw=0.8, label="stop loss")
    ax.set_xlabel("pruning ratio of the group's channels")
    ax.set_ylabel(f"relative {sens['metric']} loss (%)")
    ax.set_title(f"Pruning sensitivity of {sens['model']}: base {sens['metric']} {sens['base_metric']:.2f}, "
                 f"{sens['evaluations']} evaluations (reference: {sens['reference_evaluations']})", fontsize=9)
    if legend:
        ax.legend(fontsize=6, ncol=2 if len(layers) > 20 else 1, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3)


def plot_sensitivity(sens: dict, path: str | Path) -> Path:
    """A PNG of :func:`draw_sensitivity`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..storage import atomic_write

    fig, ax = plt.subplots(figsize=(10, 6))
    draw_sensitivity(sens, ax)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)
