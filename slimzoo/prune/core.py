"""Physical channel removal on Torch-Pruning's dependency graph, recorded so it can be replayed.

A *prunable group* is a set of coupled channels (a conv's outputs together with the next
depthwise conv, the BN after each, the inputs of every consumer, and across residual adds the
whole stage). It is named by the first dense conv (or linear) that produces those channels, a
stable PyTorch module name. Layers whose outputs are the model's outputs are never pruned.

Every pruning step is stored as ``{"layer": name, "idxs": [...]}`` (indices into that layer's
output channels at the time of the step), so a :class:`PruningRecord` replayed on a fresh model
from the registry rebuilds exactly the pruned architecture; the weights then load as a plain
state_dict.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

IMPORTANCES = ("l1", "fpgm")
RECORD_VERSION = 1


def _tp():
    import torch_pruning as tp

    return tp


def importance(name: str):
    """The Torch-Pruning importance criterion ``l1`` (L1-norm of filters, the reference's) or ``fpgm``."""
    tp = _tp()
    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    raise ConfigError(f"unknown importance {name!r}; choose one of {IMPORTANCES}")


def build_graph(model: nn.Module, example_inputs: torch.Tensor):
    """Torch-Pruning's dependency graph of ``model`` traced on ``example_inputs``."""
    was_training = model.training
    dg = _tp().DependencyGraph().build_dependency(model.eval(), example_inputs=example_inputs, verbose=False)
    model.train(was_training)
    return dg


def _consumes_channels(node, seen: set) -> bool:
    """Whether some conv/linear downstream of ``node`` reads its channels (else ``node`` feeds an output)."""
    for out in node.outputs:
        if id(out) in seen:
            continue
        seen.add(id(out))
        if isinstance(out.module, (nn.Conv2d, nn.Linear)) or _consumes_channels(out, seen):
            return True
    return False


def output_layers(model: nn.Module, dg) -> list[nn.Module]:
    """Conv/linear layers whose outputs reach the model output without another conv/linear in between."""
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m in dg.module2node
            and not _consumes_channels(dg.module2node[m], set())]


def _pruning_fn(module: nn.Module):
    tp = _tp()
    if isinstance(module, nn.Linear):
        return tp.prune_linear_out_channels
    if isinstance(module, nn.Conv2d):
        return tp.prune_conv_out_channels
    raise ConfigError(f"can only prune the outputs of Conv2d/Linear layers, not {type(module).__name__}")


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


@dataclass
class PrunableGroup:
    """Coupled channels, named by the layer that produces them."""

    name: str
    channels: int
    layers: list[str]


def prunable_groups(model: nn.Module, dg, ignored: list[str] | None = None) -> list[PrunableGroup]:
    """Every group of coupled output channels that may be pruned, in network order."""
    names = {m: n for n, m in model.named_modules()}
    skip = output_layers(model, dg) + [model.get_submodule(n) for n in (ignored or [])]
    groups = []
    for g in dg.get_all_groups(ignored_layers=skip, root_module_types=(nn.Conv2d, nn.Linear)):
        producers = [d.target.module for d, _ in g
                     if d.handler in (_tp().prune_conv_out_channels, _tp().prune_linear_out_channels)]
        dense = [m for m in producers if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)]
        if any(m in skip for m in producers):
            continue
        root = (dense or producers)[0]
        layers = list(dict.fromkeys(names[d.target.module] for d, _ in g if d.target.module in names))
        groups.append(PrunableGroup(names[root], _out_channels(root), layers))
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(groups, key=lambda g: order[g.name])


def channels_to_keep(channels: int, ratio: float, round_to: int = 8) -> int:
    """Channels left after pruning ``ratio`` of ``channels``, rounded to a multiple of ``round_to`` (at least one)."""
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"pruning ratio must be in [0, 1), got {ratio}")
    if round_to <= 1:
        return max(1, round(channels * (1 - ratio)))
    if ratio == 0 or channels <= round_to:
        return channels
    keep = round(channels * (1 - ratio) / round_to) * round_to
    return min(channels, max(round_to, keep))


@dataclass
class PruningRecord:
    """What was removed, in order; replayable onto a fresh model. Stored as JSON (no pickle)."""

    input_shape: list[int]
    importance: str = "l1"
    round_to: int = 8
    steps: list[dict] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    channels: dict[str, list[int]] = field(default_factory=dict)  # name -> [before, after]
    flops: list[int] = field(default_factory=list)  # [before, after] at input_shape
    params: list[int] = field(default_factory=list)
    version: int = RECORD_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "pruning record") -> PruningRecord:
        if not isinstance(d, Mapping) or "steps" not in d or "input_shape" not in d:
            raise CheckpointError(f"{source}: not a pruning record (needs 'input_shape' and 'steps')")
        if d.get("version", RECORD_VERSION) != RECORD_VERSION:
            raise CheckpointError(f"{source}: pruning record version {d.get('version')} is not supported "
                                  f"(this slimzoo reads version {RECORD_VERSION})")
        known = set(cls.__dataclass_fields__)
        rec = cls(**{k: v for k, v in d.items() if k in known})
        for i, s in enumerate(rec.steps):
            if not (isinstance(s, Mapping) and isinstance(s.get("layer"), str) and isinstance(s.get("idxs"), list)
                    and all(isinstance(j, int) for j in s["idxs"])):
                raise CheckpointError(f"{source}: step {i} must be {{'layer': str, 'idxs': [int, ...]}}, got {s!r}")
        return rec


def _prune_layer(model: nn.Module, dg, layer: str, idxs: list[int], source: str = "pruning") -> None:
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise CheckpointError(f"{source}: layer {layer!r} does not exist in {type(model).__name__}") from None
    n = _out_channels(module)
    bad = [j for j in idxs if not 0 <= j < n]
    if bad or len(set(idxs)) != len(idxs) or len(idxs) >= n:
        raise CheckpointError(f"{source}: cannot remove channels {bad or idxs[:8]} of {layer!r} "
                              f"({n} channels): indices out of range, repeated, or all of them")
    group = dg.get_pruning_group(module, _pruning_fn(module), sorted(idxs))
    group.prune()


def apply_ratios(model: nn.Module, example_inputs: torch.Tensor, ratios: Mapping[str, float], *,
                 importance_name: str = "l1", round_to: int = 8, dg=None) -> PruningRecord:
    """Prune ``model`` in place: group ``name`` loses ``ratio`` of its channels (rounded), least important first."""
    from ..bench import count_flops_params

    dg = dg or build_graph(model, example_inputs)
    flops0, params0 = count_flops_params(model, example_inputs)
    imp = importance(importance_name)
    rec = PruningRecord(input_shape=list(example_inputs.shape), importance=importance_name, round_to=round_to)
    for name, ratio in ratios.items():
        module = model.get_submodule(name)
        n = _out_channels(module)
        keep = channels_to_keep(n, float(ratio), round_to)
        if keep >= n:
            continue
        full = dg.get_pruning_group(module, _pruning_fn(module), list(range(n)))
        with torch.no_grad():
            scores = imp(full)
        if scores is None:  # nothing in the group carries weights to score; fall back to order
            scores = torch.arange(n, dtype=torch.float32)
        idxs = sorted(torch.argsort(scores)[: n - keep].tolist())
        _prune_layer(model, dg, name, idxs)
        rec.steps.append({"layer": name, "idxs": idxs})
        rec.ratios[name] = round(float(ratio), 4)
        rec.channels[name] = [n, keep]
    flops1, params1 = count_flops_params(model, example_inputs)
    rec.flops, rec.params = [flops0, flops1], [params0, params1]
    return rec


def replay(model: nn.Module, record: PruningRecord | Mapping, source: str = "pruning record") -> nn.Module:
    """Apply a recorded pruning to a fresh (unpruned) model, in place; returns it."""
    rec = record if isinstance(record, PruningRecord) else PruningRecord.from_dict(record, source)
    if not rec.steps:
        return model
    dg = build_graph(model, torch.randn(*rec.input_shape))
    for i, step in enumerate(rec.steps):
        _prune_layer(model, dg, step["layer"], step["idxs"], f"{source}, step {i}")
    return model


def flops_after(model: nn.Module, example_inputs: torch.Tensor, ratios: Mapping[str, float], *,
                round_to: int = 8) -> int:
    """FLOPs of ``model`` pruned at ``ratios`` (on a copy; which channels go does not change the count)."""
    from ..bench import count_flops_params

    m = copy.deepcopy(model)
    dg = build_graph(m, example_inputs)
    for name, ratio in ratios.items():
        module = m.get_submodule(name)
        n = _out_channels(module)
        keep = channels_to_keep(n, float(ratio), round_to)
        if keep < n:
            _prune_layer(m, dg, name, list(range(keep, n)))
    return count_flops_params(m, example_inputs)[0]
