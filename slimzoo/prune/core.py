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
import math
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


def _install_reshape_barriers() -> None:
    """Make Torch-Pruning's reshape index mapping record instead of crash (once per process).

    A reshape whose channel mapping it cannot work out (a channel shuffle's 5-D view, a ViT's token reshape)
    is added to the graph's ``slimzoo_barriers``, and every group whose channels pass through one is left
    unpruned: it would be pruned wrongly, or crash. Torch-Pruning recomputes the mappings on every
    ``get_pruning_group``, so the patch stays in place; it changes nothing for reshapes it handles.
    """
    from torch_pruning.dependency import index_mapping as im
    from torch_pruning.dependency import shape_infer

    if getattr(im.update_reshape_index_mapping, "slimzoo", False):
        return
    orig = im.update_reshape_index_mapping

    def channels(graph, nodes, infer) -> int | None:
        for n in nodes:
            c = infer(graph, n, [0])
            if c is not None:
                return c
        return None

    def patched(graph, node):
        barriers = graph.__dict__.setdefault("slimzoo_barriers", set())
        if node in barriers:
            return
        before = [type(d.index_mapping[0]) for d in node.dependencies]
        c_in = c_out = None
        try:
            orig(graph, node)
            c_in = channels(graph, node.inputs, shape_infer.infer_out_channels_recursively)
            c_out = channels(graph, node.outputs, shape_infer.infer_in_channels_recursively)
        except (ZeroDivisionError, IndexError, RuntimeError, TypeError, ValueError):
            barriers.add(node)
        mapped = [type(d.index_mapping[0]) for d in node.dependencies] != before
        if node in barriers or not c_in or not c_out or (c_in != c_out and not mapped):
            barriers.add(node)
        if node in barriers:
            # a group that reaches the barrier stops there (and is then left unpruned): no traversal across it,
            # whose index mappings would be wrong anyway
            node.dependencies = []

    patched.slimzoo = True
    im.update_reshape_index_mapping = patched


MAX_GROUP_ITEMS = 2000  # the largest group of the architectures measured: 151 items (GhostNet), DenseNet-121 102


class GroupTooLarge(RuntimeError):
    """Torch-Pruning's group search kept growing past MAX_GROUP_ITEMS."""


def _install_group_cap() -> None:
    """Stop a Torch-Pruning group search that keeps growing (once per process).

    On ReXNet (an in-place add into a slice of the channels) the index mappings differ at every visit, so the search
    never meets an item it has seen and ran for more than 15 minutes on one layer; capped, the group is left unpruned
    (``analyze_groups`` says why) and the whole analysis takes seconds. No group of the networks measured comes near
    the cap."""
    from torch_pruning.dependency.group import Group

    if getattr(Group.add_dep, "slimzoo", False):
        return
    orig = Group.add_dep

    def add_dep(self, dep, idxs):
        if len(self._group) >= MAX_GROUP_ITEMS:
            raise GroupTooLarge(f"more than {MAX_GROUP_ITEMS} coupled layer slots")
        orig(self, dep, idxs)

    add_dep.slimzoo = True
    Group.add_dep = add_dep


def build_graph(model: nn.Module, example_inputs: torch.Tensor):
    """Torch-Pruning's dependency graph of ``model`` traced on ``example_inputs``.

    ``graph.slimzoo_barriers`` holds the reshape nodes whose channel mapping could not be followed.
    """
    was_training = model.training
    _install_reshape_barriers()
    _install_group_cap()
    try:
        dg = _tp().DependencyGraph()
        dg.slimzoo_barriers = set()
        dg.build_dependency(model.eval(), example_inputs=example_inputs, verbose=False)
    except Exception as e:  # noqa: BLE001 - the tracer's own error is a deep traceback; say it in one sentence
        raise ConfigError(f"{type(model).__name__} cannot be traced for pruning on an input of shape "
                          f"{tuple(example_inputs.shape)} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                          "check that the model runs on that input, or prune a traceable part of it") from None
    finally:
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
    """Coupled channels, named by the layer that produces them.

    ``divisor``: the channels form that many equal blocks (the groups of a grouped convolution in the group);
    pruning removes the same positions from every block, so each grouped conv keeps its ``groups``.
    """

    name: str
    channels: int
    layers: list[str]
    divisor: int = 1


def channel_divisor(group) -> int:
    """The number of equal channel blocks a Torch-Pruning group must keep: the lcm of the ``groups`` of its grouped
    (not depthwise) convolutions, 1 when it has none."""
    d = 1
    for dep, _ in group:
        m = dep.target.module
        if isinstance(m, nn.Conv2d) and 1 < m.groups and not (m.groups == m.in_channels == m.out_channels):
            d = math.lcm(d, m.groups)
    return d


def _why_unprunable(dg, group) -> str | None:
    """Why a group must be left alone, or None."""
    tp = _tp()
    for dep, _ in group:
        for node in (dep.source, dep.target):
            if node in dg.slimzoo_barriers:
                return ("its channels pass through a reshape Torch-Pruning cannot follow (a channel shuffle, or "
                        "tokens reshaped into heads or windows)")
            if node.type == tp.ops.OPTYPE.MHA:
                return "its channels are an attention layer's embedding width (heads are not pruned)"
    return None


def analyze_groups(model: nn.Module, dg, ignored: list[str] | None = None
                   ) -> tuple[list[PrunableGroup], dict[str, str]]:
    """The prunable groups in network order, and the layers left unpruned with the reason for each."""
    names = {m: n for n, m in model.named_modules()}
    ignored = list(ignored or [])
    for n in ignored:
        try:
            model.get_submodule(n)
        except AttributeError:
            raise ConfigError(f"ignored layer {n!r} does not exist in {type(model).__name__}; layer names are "
                              "PyTorch module names such as those of model.named_modules()") from None
    outputs = output_layers(model, dg)
    skip = set(outputs) | {model.get_submodule(n) for n in ignored}
    groups, visited, left_out = [], set(), {}
    for m in list(dg.module2node):
        if not isinstance(m, (nn.Conv2d, nn.Linear)) or m in skip or m in visited or m not in names:
            continue
        try:
            g = dg.get_pruning_group(m, _pruning_fn(m), list(range(_out_channels(m))))
        except GroupTooLarge:
            left_out[names[m]] = ("Torch-Pruning's search for the channels coupled to it does not end (its index "
                                  f"mappings keep changing; stopped past {MAX_GROUP_ITEMS} items)")
            continue
        except Exception as e:  # noqa: BLE001 - Torch-Pruning's index mappings break on patterns it cannot follow
            left_out[names[m]] = f"Torch-Pruning cannot follow its channels ({type(e).__name__})"
            continue
        producers = [d.target.module for d, _ in g
                     if d.handler in (_tp().prune_conv_out_channels, _tp().prune_linear_out_channels)]
        coupled = [d.target.module for d, _ in g if dg.is_out_channel_pruning_fn(d.handler)]
        visited.update(coupled)
        if any(p in skip for p in coupled):
            continue
        dense = [p for p in producers if isinstance(p, nn.Linear) or (isinstance(p, nn.Conv2d) and p.groups == 1)]
        root = (dense or producers or [m])[0]
        why = _why_unprunable(dg, g)
        if why:
            left_out[names[root]] = why
            continue
        layers = list(dict.fromkeys(names[d.target.module] for d, _ in g if d.target.module in names))
        groups.append(PrunableGroup(names[root], _out_channels(root), layers, channel_divisor(g)))
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(groups, key=lambda g: order[g.name]), left_out


def prunable_groups(model: nn.Module, dg, ignored: list[str] | None = None) -> list[PrunableGroup]:
    """Every group of coupled output channels that may be pruned, in network order."""
    return analyze_groups(model, dg, ignored)[0]


def channels_to_keep(channels: int, ratio: float, round_to: int = 8, divisor: int = 1) -> int:
    """Channels left after pruning ``ratio`` of ``channels``, rounded to a multiple of ``round_to`` (at least one).

    With ``divisor`` > 1 (a grouped convolution's blocks) the count is a multiple of ``divisor`` instead: every
    block keeps the same number of channels, at least one.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"pruning ratio must be in [0, 1), got {ratio}")
    if divisor > 1 and channels % divisor == 0:
        per = channels // divisor
        return divisor * max(1, min(per, round(per * (1 - ratio))))
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


def _drop_idxs(scores: torch.Tensor, n: int, keep: int, divisor: int) -> list[int]:
    """The ``n - keep`` least important channels; with ``divisor`` blocks, the same positions in every block."""
    if divisor > 1 and n % divisor == 0:
        per = n // divisor
        pos = torch.argsort(scores.reshape(divisor, per).mean(0))[: per - keep // divisor].tolist()
        return sorted(b * per + p for b in range(divisor) for p in pos)
    return sorted(torch.argsort(scores)[: n - keep].tolist())


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
                 importance_name: str = "l1", round_to: int = 8, dg=None, measure: bool = True) -> PruningRecord:
    """Prune ``model`` in place: group ``name`` loses ``ratio`` of its channels (rounded), least important first.

    With ``measure`` (the default) the record carries FLOPs and parameters before and after; a sensitivity sweep,
    which only evaluates the pruned model, turns it off (two counts cost more than pruning one group).
    """
    from ..bench import count_flops_params

    dg = dg or build_graph(model, example_inputs)
    if measure:
        flops0, params0 = count_flops_params(model, example_inputs)
    imp = importance(importance_name)
    rec = PruningRecord(input_shape=list(example_inputs.shape), importance=importance_name, round_to=round_to)
    for name, ratio in ratios.items():
        module = model.get_submodule(name)
        n = _out_channels(module)
        full = dg.get_pruning_group(module, _pruning_fn(module), list(range(n)))
        divisor = channel_divisor(full)
        keep = channels_to_keep(n, float(ratio), round_to, divisor)
        if keep >= n:
            continue
        with torch.no_grad():
            scores = imp(full)
        if scores is None:  # nothing in the group carries weights to score; fall back to order
            scores = torch.arange(n, dtype=torch.float32)
        idxs = _drop_idxs(scores, n, keep, divisor)
        _prune_layer(model, dg, name, idxs)
        rec.steps.append({"layer": name, "idxs": idxs})
        rec.ratios[name] = round(float(ratio), 4)
        rec.channels[name] = [n, keep]
    try:
        check_forward(model, example_inputs, list(rec.channels))
    except PrunedForwardError as e:
        e.ratios, e.round_to = dict(ratios), round_to
        raise
    if measure:
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


def _group_shape(model: nn.Module, dg, name: str) -> tuple[int, int]:
    """(output channels, channel divisor) of the group led by layer ``name``; a CheckpointError if there is none."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise CheckpointError(f"pruning: layer {name!r} does not exist in {type(model).__name__}") from None
    n = _out_channels(module)
    return n, channel_divisor(dg.get_pruning_group(module, _pruning_fn(module), list(range(n))))


def flops_after(model: nn.Module, example_inputs: torch.Tensor, ratios: Mapping[str, float], *,
                round_to: int = 8) -> int:
    """FLOPs of ``model`` pruned at ``ratios`` (on a copy; which channels go does not change the count)."""
    from ..bench import count_flops_params

    return count_flops_params(_pruned_for_count(model, example_inputs, ratios, round_to), example_inputs)[0]


def _pruned_for_count(model: nn.Module, example_inputs: torch.Tensor, ratios: Mapping[str, float],
                      round_to: int) -> nn.Module:
    """A copy of ``model`` with each group's last channels removed at ``ratios``, checked to run."""
    m = copy.deepcopy(model)
    dg = build_graph(m, example_inputs)
    for name, ratio in ratios.items():
        n, divisor = _group_shape(m, dg, name)
        keep = channels_to_keep(n, float(ratio), round_to, divisor)
        if keep < n:
            _prune_layer(m, dg, name, _drop_idxs(-torch.arange(n, dtype=torch.float32), n, keep, divisor))
    try:
        check_forward(m, example_inputs, list(ratios))
    except PrunedForwardError as e:
        e.ratios, e.counting, e.round_to = dict(ratios), True, round_to
        raise
    return m


class FlopsAfter:
    """``flops_after`` for one model and rounding, remembered per set of kept channel counts.

    Searches over ratios (a loss threshold, a uniform ratio, a mix of two choices) ask again and again for ratios
    that keep the same channels; each new count prunes a copy of the model and traces it, a fraction of a second.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, round_to: int = 8, dg=None):
        self.model, self.example_inputs, self.round_to = model, example_inputs, round_to
        self._dg = dg  # the unpruned model's graph, built on first use unless given
        self._shape: dict[str, tuple[int, int]] = {}  # group name -> (channels, divisor) in the unpruned model
        self._cache: dict[tuple, int] = {}
        self.computed = 0  # distinct counts traced

    def _keep(self, name: str, ratio: float) -> int:
        if name not in self._shape:
            self._dg = self._dg or build_graph(self.model, self.example_inputs)
            self._shape[name] = _group_shape(self.model, self._dg, name)
        n, divisor = self._shape[name]
        return channels_to_keep(n, float(ratio), self.round_to, divisor)

    def __call__(self, ratios: Mapping[str, float]) -> int:
        keeps = ((name, self._keep(name, r)) for name, r in ratios.items())
        key = tuple(sorted((name, k) for name, k in keeps if k < self._shape[name][0]))
        if key not in self._cache:
            self._cache[key] = flops_after(self.model, self.example_inputs, ratios, round_to=self.round_to)
            self.computed += 1
        return self._cache[key]


class PrunedForwardError(ConfigError):
    """The pruned model no longer runs: a layer uses a channel count Torch-Pruning cannot see."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause
        self.ratios: dict[str, float] = {}  # the choice that broke it and its rounding: set where it was pruned
        self.counting = False  # raised while counting FLOPs (flops_after drops each layer's last channels)
        self.round_to = 8


def check_forward(model: nn.Module, example_inputs: torch.Tensor, pruned: list[str]) -> None:
    """Run the pruned ``model`` once; if it fails, say which pruned groups and how to leave them out."""
    try:
        with torch.no_grad():
            model.eval()(example_inputs)
    except Exception as e:  # noqa: BLE001 - a shape error from deep inside the model's forward
        names = ", ".join(pruned[:6]) + (" ..." if len(pruned) > 6 else "")
        cause = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        raise PrunedForwardError(f"the pruned {type(model).__name__} no longer runs ({cause}) after pruning {names}: "
                                 "some layer uses a fixed channel count Torch-Pruning cannot see (a reshape to a "
                                 "constant size, a hard-coded width, a split into fixed sizes); leave the layer out "
                                 "with ignored=[NAME] (--ignore NAME)", cause) from None


BROKEN = "pruning it breaks the model's forward pass ({}): a layer uses a fixed channel count Torch-Pruning cannot see"


def find_broken_groups(model: nn.Module, example_inputs: torch.Tensor, ratios: Mapping[str, float], *,
                       importance_name: str = "l1", round_to: int = 8, counting: bool = False,
                       alone: bool = True) -> dict[str, str]:
    """Groups of ``ratios`` (a choice whose pruning broke the forward pass) to leave whole, with why: those that
    break it when pruned alone at their ratio, or else the first whose addition breaks the others (network order,
    bisected; ``alone=False`` only bisects, for a later failure once each group has been tried alone). Each test
    prunes a copy and runs it, as ``apply_ratios`` does or, with ``counting``, as
    ``flops_after`` does (which channels go can decide whether it breaks: MixNet's fixed splits lose a whole part
    when the last channels go).

    What a pruner meets on networks it was not built for: GhostNet slices a concatenation to a fixed width, MixNet
    splits its channels into fixed sizes."""
    def breaks(subset: Mapping[str, float]) -> str | None:
        try:
            if counting:  # pruned as flops_after prunes, without the count
                _pruned_for_count(model, example_inputs, subset, round_to)
            else:
                apply_ratios(copy.deepcopy(model), example_inputs, subset, importance_name=importance_name,
                             round_to=round_to, measure=False)
        except PrunedForwardError as e:
            return e.cause
        return None

    broken = {}
    for name, ratio in ratios.items() if alone else ():
        if (cause := breaks({name: ratio})) is not None:
            broken[name] = BROKEN.format(cause)
    names = list(ratios)
    if broken or (cause := breaks(ratios)) is None:
        return broken
    ok, bad = 0, len(names)  # names[:ok] prune together, names[:bad] do not
    while bad - ok > 1:
        mid = (ok + bad) // 2
        if (c := breaks({n: ratios[n] for n in names[:mid]})) is None:
            ok = mid
        else:
            bad, cause = mid, c
    return {names[bad - 1]: BROKEN.format(cause) + " (with the groups before it pruned)"}
