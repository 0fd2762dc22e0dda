"""Grouped convs with several channels per group: int8 or float, chosen layer by layer by timing both."""
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from slimzoo.errors import ConfigError
from slimzoo.quant import PTQConfig, integer_layers


class _Blocks(nn.Module):
    """A dense stem, a depthwise conv, a channel-multiplier conv, two identical grouped convs (4 channels per group)
    and one of another shape, behind a channel shuffle whose shape is computed from the tensor (ShuffleNet)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU())
        self.mult = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1, groups=16), nn.ReLU())
        self.g1 = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=8), nn.BatchNorm2d(32), nn.ReLU())
        self.g2 = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1, groups=8), nn.BatchNorm2d(32), nn.ReLU())
        self.g3 = nn.Sequential(nn.Conv2d(32, 64, 3, 2, 1, groups=4), nn.ReLU())
        self.head = nn.Conv2d(64, 10, 1)

    def forward(self, x):
        x = self.mult(self.dw(self.stem(x)))
        b, c, h, w = x.shape
        x = x.reshape(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.head(self.g3(self.g2(self.g1(x))))


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    from slimzoo.export import export_onnx, fold_batchnorm

    torch.manual_seed(0)
    m = _Blocks().train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, 32, 32))
    return export_onnx(fold_batchnorm(m.eval()), tmp_path_factory.mktemp("g") / "fp32.onnx", torch.randn(1, 3, 32, 32))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]


def _convs(path):
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


def test_candidates_are_grouped_convs_with_several_channels_per_group(fp32_file):
    import onnx

    from slimzoo.quant.grouped import conv_input_shapes, grouped_convs

    convs = _convs(fp32_file)  # stem, dw, mult, g1, g2, g3, head
    model = onnx.load(str(fp32_file))
    assert grouped_convs(model) == convs[3:6]
    # the shapes come from running the graph: behind the shuffle's computed reshape, shape inference has none
    assert conv_input_shapes(model, convs[3:6], (1, 3, 32, 32)) == {
        convs[3]: (1, 32, 16, 16), convs[4]: (1, 32, 16, 16), convs[5]: (1, 32, 16, 16)}


def test_each_layer_is_timed_in_int8_and_float_once_per_shape(fp32_file):
    import onnx

    from slimzoo.quant.grouped import MIN_GAIN, choose_grouped

    convs = _convs(fp32_file)
    r = choose_grouped(onnx.load(str(fp32_file)), (1, 3, 32, 32))
    assert set(r["layers"]) == set(convs[3:6]) and r["untimed"] == []
    assert r["layers"][convs[3]] == r["layers"][convs[4]]  # same shape: one timing
    for name, t in r["layers"].items():
        assert t["int8_ms"] > 0 and t["float_ms"] > 0
        assert t["chosen"] == ("float" if t["float_ms"] < t["int8_ms"] * (1 - MIN_GAIN) else "int8")
        assert (name in r["float"]) == (t["chosen"] == "float")
    # past the time budget the layers of shapes not yet timed are not timed and stay int8
    r = choose_grouped(onnx.load(str(fp32_file)), (1, 3, 32, 32), budget_s=0.0)
    assert set(r["layers"]) == set(convs[3:5]) and r["untimed"] == [convs[5]] and convs[5] not in r["float"]


@pytest.mark.parametrize("float_wins", [True, False])
def test_auto_keeps_a_grouped_conv_float_only_where_float_is_clearly_faster(tmp_path, fp32_file, monkeypatch,
                                                                             float_wins):
    from slimzoo.quant import grouped as grouped_mod
    from slimzoo.quant.ptq import quantize_checked

    # the timing is the runtime's; what is tested is the decision taken on it and what the file then is
    ms = {(1, 32, 16, 16): [1.0, 0.5 if float_wins else 0.95]}  # 0.95: within MIN_GAIN, int8 stays
    monkeypatch.setattr(grouped_mod, "time_files", lambda paths, shape, **kw: ms.get(tuple(shape), [1.0, 2.0]))
    convs = _convs(fp32_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, check = quantize_checked(fp32_file, tmp_path / "q.onnx", _batches(), PTQConfig(stem="int8"),
                                       (1, 3, 32, 32))
    expected = convs[3:6] if float_wins else []
    assert check.grouped["float"] == expected
    # in float on purpose: the mult conv (by rule) and the chosen ones, not reported as a problem
    assert sorted(integer_layers(path).float_layers) == sorted([convs[2], *expected])
    assert check.kept_float == 1 + len(expected) and not any("still run in float" in p for p in check.problems())
    saved = json.loads((tmp_path / "q.onnx.check.json").read_text())["grouped"]
    assert saved["float"] == expected and set(saved["layers"]) == set(convs[3:6])
    assert f"{len(expected)} of 3 grouped or narrow depthwise convs kept in float" in check.summary()


def test_int8_float_and_unchecked_auto_decide_without_timing(tmp_path, fp32_file, monkeypatch):
    from slimzoo.quant import grouped as grouped_mod
    from slimzoo.quant.ptq import quantize_checked, quantize_onnx

    def no_timing(*a, **kw):
        raise AssertionError("timed")

    monkeypatch.setattr(grouped_mod, "time_files", no_timing)
    convs = _convs(fp32_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, check = quantize_checked(fp32_file, tmp_path / "a.onnx", _batches(), PTQConfig(stem="int8",
                                    grouped_convs="float"), (1, 3, 32, 32))
        assert sorted(integer_layers(p).float_layers) == sorted(convs[2:6]) and check.grouped is None
        p, check = quantize_checked(fp32_file, tmp_path / "b.onnx", _batches(), PTQConfig(stem="int8",
                                    grouped_convs="int8"), (1, 3, 32, 32))
        assert integer_layers(p).float_layers == [convs[2]]
        p, _, _ = quantize_onnx(fp32_file, tmp_path / "c.onnx", _batches(), PTQConfig(stem="int8"))
        assert integer_layers(p).float_layers == [convs[2]]  # an unchecked "auto" stays int8
    with pytest.raises(ConfigError, match="grouped_convs must be one of auto, int8, float"):
        PTQConfig(grouped_convs="fast")


def test_a_network_without_grouped_convs_is_not_timed(tmp_path, monkeypatch):
    from slimzoo.export import export_onnx
    from slimzoo.quant import grouped as grouped_mod
    from slimzoo.quant.ptq import quantize_checked

    monkeypatch.setattr(grouped_mod, "time_files", lambda *a, **kw: pytest.fail("timed"))
    m = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU()).eval()
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, check = quantize_checked(fp32, tmp_path / "q.onnx", _batches(), PTQConfig(stem="int8"), (1, 3, 32, 32))
    assert check.grouped is None and "grouped" not in check.summary()
    assert np.isfinite(check.int8_ms)


class _Ghost(nn.Module):
    """GhostNet's module (a 1x1 conv, a cheap depthwise conv on its output, both concatenated and sliced) beside a
    depthwise conv of 24 channels that can be widened, and one of 16 on the int8 kernel's block."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU())
        self.dw16 = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU())
        self.primary = nn.Sequential(nn.Conv2d(16, 12, 1), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(12, 12, 3, 1, 1, groups=12), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(23, 24, 1), nn.ReLU())
        self.dw24 = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24), nn.ReLU())
        self.head = nn.Conv2d(24, 10, 1)

    def forward(self, x):
        p = self.primary(self.dw16(self.stem(x)))
        g = torch.cat([p, self.cheap(p)], 1)[:, :23]
        return self.head(self.dw24(self.expand(g)))


@pytest.mark.parametrize("pad, timed", [("auto", ["cheap"]), ("off", ["cheap", "dw24"])])
def test_narrow_depthwise_convs_that_will_not_be_widened_are_timed_too(tmp_path, monkeypatch, pad, timed):
    """A depthwise conv off the int8 kernel's block of 16 runs channel by channel in int8 (GhostNet's cheap convs:
    4.7 ms in int8 against 1.5 ms in float); where it cannot be widened it is timed in int8 and in float like a
    grouped conv, and kept float where that is clearly faster."""
    from slimzoo.export import export_onnx
    from slimzoo.quant import grouped as grouped_mod
    from slimzoo.quant.ptq import quantize_checked

    torch.manual_seed(0)
    fp32 = export_onnx(_Ghost().eval(), tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    convs = {c.split("/")[1]: c for c in _convs(fp32)}
    monkeypatch.setattr(grouped_mod, "time_files", lambda paths, shape, **kw: [1.0, 0.5])  # float clearly faster
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, check = quantize_checked(fp32, tmp_path / "q.onnx", _batches(), PTQConfig(stem="int8",
                                       pad_channels=pad), (1, 3, 32, 32))
    assert sorted(check.grouped["layers"]) == sorted(check.grouped["float"]) == sorted(convs[k] for k in timed)
    assert sorted(integer_layers(path).float_layers) == sorted(convs[k] for k in timed)
    if pad == "auto":  # the 24-channel one widened instead
        assert [w["depthwise"] for w in check.widened["widened"]] == [[convs["dw24"]]]
