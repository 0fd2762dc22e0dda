"""Structured pruning: channel removal, replayable records, sensitivity analysis and ratio selection."""
import json
import warnings

import pytest
import torch
from torch import nn

from slimzoo.errors import CheckpointError, ConfigError
from slimzoo.models import create_model
from slimzoo.prune import (
    PruneConfig,
    PruningRecord,
    SensitivityConfig,
    analyze_sensitivity,
    apply_ratios,
    build_graph,
    channels_to_keep,
    plot_sensitivity,
    prunable_groups,
    prune,
    ratios_for_threshold,
    replay,
    search_threshold,
    uniform_ratio,
)

X = torch.randn(1, 3, 32, 32)


def _model(name="mobilenet_v1", width=0.5):
    torch.manual_seed(0)
    return create_model(name, num_classes=10, width_mult=width).eval()


@pytest.mark.parametrize(("n", "ratio", "keep"), [(64, 0.5, 32), (64, 0.3, 48), (32, 0.9, 8), (8, 0.5, 8),
                                                   (100, 0.0, 100), (1024, 0.75, 256)])
def test_channels_to_keep_rounds_to_multiple_of_8(n, ratio, keep):
    assert channels_to_keep(n, ratio, 8) == keep


def test_channels_to_keep_rejects_bad_ratio():
    with pytest.raises(ConfigError, match="ratio"):
        channels_to_keep(64, 1.0)


def test_groups_exclude_output_layers_and_follow_couplings():
    m = _model("mobilenet_v1")
    groups = prunable_groups(m, build_graph(m, X))
    names = [g.name for g in groups]
    assert "fc" not in names and len(groups) == 14  # stem + 13 pointwise convs; the classifier is never pruned
    # a pointwise conv's channels are coupled to the next depthwise conv and the next pointwise conv's inputs
    g = next(g for g in groups if g.name == "features.3.pw.0")
    assert {"features.4.dw.0", "features.4.pw.0"} <= set(g.layers)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "resnet50"])
def test_pruning_removes_channels_and_replays_exactly(name):
    m = _model(name)
    ratios, red = uniform_ratio(m, X, 0.4)
    assert abs(red - 0.4) <= 0.05  # at round_to 8; prune() refines the rounding to land within 2 points
    pruned = _model(name)
    rec = apply_ratios(pruned, X, ratios)
    assert rec.flops[1] == pytest.approx((1 - red) * rec.flops[0], rel=1e-6) and rec.params[1] < rec.params[0]
    for before, after in rec.channels.values():
        assert after < before and (after % 8 == 0 or after == before)
    assert pruned(X).shape == (1, 10)
    # replay the JSON record on a fresh registry model, then load the plain state_dict
    fresh = replay(_model(name), json.loads(json.dumps(rec.to_dict())))
    fresh.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(fresh(X), pruned(X))


def test_residual_coupling_keeps_resnet_adds_consistent():
    m = _model("resnet50")
    groups = {g.name: g for g in prunable_groups(m, build_graph(m, X))}
    residual = next(g for n, g in groups.items() if n.startswith("layer2") and "downsample" in n)
    apply_ratios(m, X, {residual.name: 0.5})
    widths = {m.layer2[i].conv3.out_channels for i in range(len(m.layer2))} | {m.layer2[0].downsample[0].out_channels}
    assert len(widths) == 1 and widths.pop() == residual.channels // 2  # every block of the stage shrinks together
    assert m(X).shape == (1, 10)


def test_l1_prunes_the_smallest_filters_and_fpgm_runs():
    m = _model("mobilenet_v1")
    conv = m.features[3].pw[0]
    with torch.no_grad():
        conv.weight[:8] *= 1e-3  # eight tiny filters
    rec = apply_ratios(m, X, {"features.3.pw.0": 0.0625 * 2}, round_to=8)  # remove 8 of 64
    assert rec.steps[0]["idxs"] == list(range(8))
    rec = apply_ratios(_model("mobilenet_v1"), X, {"features.3.pw.0": 0.5}, importance_name="fpgm")
    assert len(rec.steps[0]["idxs"]) == rec.channels["features.3.pw.0"][0] // 2


def test_bad_records_fail_clearly():
    rec = {"input_shape": [1, 3, 32, 32], "steps": [{"layer": "features.1.pw.0", "idxs": [0, 999]}]}
    with pytest.raises(CheckpointError, match="out of range"):
        replay(_model(), rec, source="cfg.json")
    with pytest.raises(CheckpointError, match="does not exist"):
        replay(_model(), {"input_shape": [1, 3, 32, 32], "steps": [{"layer": "nope", "idxs": [0]}]})
    with pytest.raises(CheckpointError, match="not a pruning record"):
        PruningRecord.from_dict({"steps": []})
    with pytest.raises(CheckpointError, match="step 0"):
        PruningRecord.from_dict({"input_shape": [1, 3, 8, 8], "steps": [{"layer": "x", "idxs": "0"}]})


def test_pruned_checkpoint_loads_without_pickle_and_exports_smaller(tmp_path):
    from slimzoo.checkpoint import load_checkpoint, save_checkpoint
    from slimzoo.export import export_onnx

    base = _model()
    pruned = _model()
    rec = apply_ratios(pruned, X, uniform_ratio(base, X, 0.5)[0])
    save_checkpoint(pruned, tmp_path / "ck", {"model": "mobilenet_v1", "num_classes": 10, "width_mult": 0.5,
                                              "pruning": rec.to_dict()})
    assert not list((tmp_path / "ck").glob("*.pt*"))  # safetensors + JSON only
    loaded, _ = load_checkpoint(tmp_path / "ck")
    torch.testing.assert_close(loaded(X), pruned(X))
    a = export_onnx(base, tmp_path / "a.onnx", X)
    b = export_onnx(loaded, tmp_path / "b.onnx", X)
    assert b.stat().st_size < 0.6 * a.stat().st_size


class CountingEval:
    """A deterministic metric: agreement (%) with the unpruned model's logits on a fixed batch."""

    def __init__(self, reference, fail_after=None):
        self.x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            self.ref = reference(self.x).argmax(1)
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, model):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        with torch.no_grad():
            return 100.0 * (model(self.x).argmax(1) == self.ref).float().mean().item()


def test_sensitivity_is_cheap_readable_and_resumes(tmp_path):
    m = _model()
    cfg = SensitivityConfig(stop_loss=0.3)
    full = analyze_sensitivity(m, X, CountingEval(m), tmp_path / "full.json", cfg, progress=False)
    layers = full["layers"]
    assert len(layers) == 14 and all(e["done"] for e in layers.values())
    assert full["evaluations"] <= full["reference_evaluations"] / 3
    assert full["base_metric"] == 100.0
    for e in layers.values():  # a sweep stops at the first loss past stop_loss
        losses = [p["loss"] for p in e["points"]]
        assert all(loss <= cfg.stop_loss for loss in losses[:-1])
    # interrupted after 5 evaluations, then resumed: same result, no evaluation repeated
    path = tmp_path / "part.json"
    with pytest.raises(KeyboardInterrupt):
        analyze_sensitivity(m, X, CountingEval(m, fail_after=5), path, cfg, progress=False)
    assert json.loads(path.read_text())["evaluations"] == 5
    ev = CountingEval(m)
    resumed = analyze_sensitivity(m, X, ev, path, cfg, progress=False)
    assert ev.calls == full["evaluations"] - 5
    assert resumed["layers"] == layers
    png = plot_sensitivity(resumed, tmp_path / "s.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    # other weights: the old file is not reused
    m2 = _model()
    with torch.no_grad():
        m2.fc.bias += 1
    ev2 = CountingEval(m2)
    analyze_sensitivity(m2, X, ev2, path, cfg, progress=False)
    assert json.loads(path.read_text())["evaluations"] == ev2.calls  # every evaluation done anew


def test_threshold_search_meets_flops_target_and_respects_losses(tmp_path):
    m = _model()
    sens = analyze_sensitivity(m, X, CountingEval(m), tmp_path / "s.json", SensitivityConfig(stop_loss=1.0),
                               progress=False)
    ratios, t, red = search_threshold(m, X, sens, 0.4)
    assert abs(red - 0.4) <= 0.05  # at round_to 8; prune() refines the rounding to land within 2 points
    at_t = ratios_for_threshold(sens, t)  # refined: each layer at its threshold ratio or the one just below
    assert set(ratios) <= set(at_t) and all(r <= at_t[n] for n, r in ratios.items())
    for name, r in ratios.items():  # no chosen ratio goes past a measured loss above the threshold
        assert all(p["loss"] <= t + 1e-9 for p in sens["layers"][name]["points"] if p["ratio"] <= r)
    with pytest.raises(ConfigError, match="at most"):
        search_threshold(m, X, sens, 0.99)



def test_refine_lands_inside_one_layers_step():
    """A single heavy layer whose whole step (0 -> 75%) jumps past the target: it takes a ratio in between."""
    from slimzoo.bench import count_flops_params
    from slimzoo.prune.core import flops_after
    from slimzoo.prune.sensitivity import refine_to_target

    m = _model()
    flops0 = count_flops_params(m, X)[0]
    layer = "features.11.pw.0"
    full = 1 - flops_after(m, X, {layer: 0.75}) / flops0
    target = full / 2
    ratios, red = refine_to_target(m, X, ({}, 0.0), ({layer: 0.75}, full), target, flops0)
    assert 0 < ratios[layer] < 0.75 and abs(red - target) < full / 4


def test_threshold_search_extrapolates_past_the_measured_ratios_only_when_it_must(tmp_path):
    from slimzoo.prune import SensitivityExtrapolationWarning

    m = _model()
    sens = analyze_sensitivity(m, X, CountingEval(m), tmp_path / "s.json",
                               SensitivityConfig(ratios=(0.25,), stop_loss=1.0), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SensitivityExtrapolationWarning)  # reachable on measured ratios: no guess
        _, _, red = search_threshold(m, X, sens, 0.2)
    assert abs(red - 0.2) <= 0.05
    with pytest.warns(SensitivityExtrapolationWarning, match="past their last measured ratio"):
        ratios, _, red = search_threshold(m, X, sens, 0.45)
    assert abs(red - 0.45) <= 0.05 and max(ratios.values()) > 0.25
    with pytest.raises(ConfigError, match="at most"):
        search_threshold(m, X, sens, 0.99)


class _FixedWidth(nn.Module):
    """A buffer of a fixed channel count multiplies one layer's output: pruning that layer breaks the forward pass
    (Torch-Pruning does not see buffers), pruning the others does not."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(32, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU())
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 64).view(1, 64, 1, 1))
        self.body = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 3, 1, 1),
                                  nn.ReLU())
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(self.body(self.mid(self.stem(x)) * self.gain).mean((2, 3)))


@pytest.mark.parametrize("method", ["uniform", "sensitivity"])
def test_a_group_whose_pruning_breaks_the_forward_is_left_whole_and_said(tmp_path, method):
    torch.manual_seed(0)
    m = _FixedWidth().eval()
    cfg = PruneConfig.from_dict({"flops_reduction": 0.3, "method": method, "sensitivity": {"stop_loss": 1.0}})
    pruned, rec, info = prune(m, X, cfg, evaluate=CountingEval(m), sensitivity_path=tmp_path / "s.json",
                              progress=False)
    assert "mid.0" not in rec.ratios and "breaks the model's forward pass" in info["left_unpruned"]["mid.0"]
    assert abs(info["flops_reduction"] - 0.3) <= 0.02 and rec.ratios
    with torch.no_grad():
        assert pruned(X).shape == (1, 10)
    fresh = _FixedWidth().eval()
    replay(fresh, rec)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(X), pruned(X))
    if method == "uniform":  # a target out of reach says which groups had to be left whole
        with pytest.raises(ConfigError, match="left whole because pruning them breaks"):
            prune(m, X, PruneConfig(flops_reduction=0.97, method="uniform"))


def test_a_group_search_that_does_not_end_is_stopped_and_the_group_left_whole(monkeypatch):
    """ReXNet's group search ran for more than 15 minutes on one layer; past the cap the group is left unpruned."""
    import slimzoo.prune.core as core

    m = _model("resnet50")
    sizes = {g.name: len(g.layers) for g in prunable_groups(m, build_graph(m, X))}
    monkeypatch.setattr(core, "MAX_GROUP_ITEMS", 12)  # resnet50's residual stages couple more layers than that
    groups, left = core.analyze_groups(m, build_graph(m, X))
    stopped = [n for n, why in left.items() if "does not end" in why]
    lost = set(sizes) - {g.name for g in groups}  # the residual stages' groups
    assert stopped and lost and {g.name for g in groups} <= set(sizes)
    assert all(sizes[n] >= 4 for n in lost)  # each stage couples several convs and their BatchNorms

def test_flops_after_is_remembered_per_kept_channels_and_matches_a_fresh_count():
    from slimzoo.prune.core import FlopsAfter, flops_after

    m = _model()
    flops = FlopsAfter(m, X)
    a = {"features.3.pw.0": 0.5, "features.5.pw.0": 0.25}
    assert flops(a) == flops_after(m, X, a)
    # 0.52 keeps the same 32 of 64 channels, and a ratio of 0 (or one that keeps everything) prunes nothing
    assert flops({"features.3.pw.0": 0.52, "features.5.pw.0": 0.25, "features.7.pw.0": 0.0}) == flops(a)
    assert flops.computed == 1
    b = {"features.3.pw.0": 0.75}
    assert flops(b) == flops_after(m, X, b) < flops_after(m, X, {}) and flops.computed == 2


def test_prune_api_and_config(tmp_path):
    m = _model()
    cfg = PruneConfig.from_dict({"flops_reduction": 0.3, "method": "sensitivity", "sensitivity": {"stop_loss": 1}})
    assert cfg.sensitivity.importance == cfg.importance
    pruned, rec, info = prune(m, X, cfg, evaluate=CountingEval(m), sensitivity_path=tmp_path / "s.json",
                              progress=False)
    assert abs(info["flops_reduction"] - 0.3) <= 0.02 and rec.steps and pruned(X).shape == (1, 10)
    assert info["sensitivity_evaluations"] <= info["reference_evaluations"] / 3
    with pytest.raises(ConfigError, match="unknown pruning setting"):
        PruneConfig.from_dict({"flops": 0.5})
    with pytest.raises(ConfigError, match="flops_reduction"):
        PruneConfig.from_dict({"flops_reduction": 1.5})


def test_a_late_rank_still_takes_its_whole_share_of_the_sensitivity_groups(tmp_path, monkeypatch):
    from slimzoo import distributed

    m = _model()
    cfg = SensitivityConfig(stop_loss=1.0)
    out = tmp_path / "s.json"
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_gather_list", lambda items: items)  # no partner to gather from
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    monkeypatch.setattr(distributed, "rank", lambda: 0)  # rank 0 finishes first and writes what it has
    first = analyze_sensitivity(m, X, CountingEval(m), out, cfg, progress=False)
    names = list(first["layers"])
    assert [first["layers"][n]["done"] for n in names] == [i % 2 == 0 for i in range(len(names))]
    monkeypatch.setattr(distributed, "rank", lambda: 1)  # rank 1 starts late and reads rank 0's finished groups
    second = analyze_sensitivity(m, X, CountingEval(m), out, cfg, progress=False)
    assert all(e["done"] for e in second["layers"].values())  # its whole share, not half of what was left
