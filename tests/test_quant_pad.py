"""Depthwise convs off the int8 kernel's 16-channel block, widened with zero channels: same outputs, or left alone
where an op would see the extra channels."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from slimzoo.errors import ConfigError
from slimzoo.quant import PTQConfig


class _SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 8, 1), nn.Conv2d(8, c, 1)

    def forward(self, x):
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1)))))


class _Net(nn.Module):
    """Three inverted-residual-like blocks: expand (24 channels, Hardswish) -> depthwise -> squeeze-excite -> project;
    40 channels -> depthwise -> project (ReLU); and 24 channels split off a 48-channel tensor and concatenated
    back (ShuffleNet's halves: the widening must not touch them)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 24, 1), nn.BatchNorm2d(24), nn.Hardswish(),
                               nn.Conv2d(24, 24, 3, 1, 1, groups=24), nn.BatchNorm2d(24), nn.Hardswish(), _SE(24),
                               nn.Conv2d(24, 16, 1), nn.BatchNorm2d(16))
        self.b = nn.Sequential(nn.Conv2d(16, 40, 1), nn.ReLU(), nn.Conv2d(40, 40, 5, 2, 2, groups=40), nn.ReLU(),
                               nn.Conv2d(40, 32, 1))
        self.c_in = nn.Conv2d(32, 48, 1)
        self.c_dw = nn.Conv2d(24, 24, 3, 1, 1, groups=24)
        self.head = nn.Conv2d(48, 10, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.a(x)
        y1, y2 = torch.relu(self.c_in(self.b(x))).chunk(2, 1)
        return self.head(torch.cat([self.c_dw(y1), y2], 1))


@pytest.fixture(scope="module")
def fp32_file(tmp_path_factory):
    from slimzoo.export import export_onnx, fold_batchnorm

    torch.manual_seed(0)
    m = _Net().train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, 48, 48))
    out = tmp_path_factory.mktemp("pad") / "fp32.onnx"
    return export_onnx(fold_batchnorm(m.eval()), out, torch.randn(1, 3, 48, 48))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 48, 48, generator=g) for _ in range(2)]


def _prepared(fp32_file):
    from slimzoo.quant.ptq import prepare_ptq

    return prepare_ptq(fp32_file, _batches(), PTQConfig(num_calibration=16))


def test_sets_found_widened_and_blocked(fp32_file):
    from slimzoo.quant.pad import channel_sets

    sets = {s.channels: s for s in channel_sets(_prepared(fp32_file).model)}
    assert sorted(sets) == [24, 40]  # the split half's 24 is found too (and left, below)
    a = next(s for s in channel_sets(_prepared(fp32_file).model) if not s.blocked and s.channels == 24)
    assert len(a.sources) == 2 and len(a.sinks) == 2 and len(a.depthwise) == 1  # expand + SE fc2; fc1 + project
    assert a.padded() == 32 and sets[40].padded() == 48 and not sets[40].blocked
    blocked = [s for s in channel_sets(_prepared(fp32_file).model) if s.blocked]
    assert len(blocked) == 1 and "Concat" in blocked[0].blocked  # c_dw reads half of a split, into a concat


def test_widened_file_computes_the_same(fp32_file, tmp_path):
    import onnx
    import onnxruntime as ort

    from slimzoo.quant.pad import pad_channels
    from slimzoo.quant.qdq import write_qdq

    prep = _prepared(fp32_file)
    narrow = write_qdq(prep.model, prep.plan, prep.qparams, tmp_path / "narrow.onnx")
    model, qp, report = pad_channels(prep.model, prep.plan, prep.qparams)
    wide = write_qdq(model, prep.plan, qp, tmp_path / "wide.onnx")
    assert [(w["channels"], w["padded"]) for w in report["widened"]] == [(24, 32), (40, 48)]
    assert len(report["left"]) == 1 and report["left"][0]["channels"] == 24
    groups = sorted(a.i for n in onnx.load(str(wide)).graph.node if n.op_type == "Conv" for a in n.attribute
                    if a.name == "group" and a.i > 1)
    assert groups == [24, 32, 48]
    x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
    ya, yb = (ort.InferenceSession(str(p)).run(None, {"input": x})[0] for p in (narrow, wide))
    assert np.abs(ya).max() > 0
    np.testing.assert_array_equal(ya, yb)
    narrow_dw = sorted(q.qweight.shape[0] for q in prep.qparams.weights.values() if q.qweight.shape[1:] == (1, 3, 3))
    wide_dw = sorted(q.qweight.shape[0] for q in qp.weights.values() if q.qweight.shape[1:] == (1, 3, 3))
    assert narrow_dw == [24, 24] and wide_dw == [24, 32]  # the prepared parameters are left as they were


def test_quantize_checked_records_the_choice(fp32_file, tmp_path):
    from slimzoo.quant.ptq import quantize_checked

    for mode in ("auto", "on", "off"):
        out = tmp_path / f"{mode}.onnx"
        _, check = quantize_checked(fp32_file, out, _batches(), PTQConfig(num_calibration=16, pad_channels=mode),
                                    (1, 3, 48, 48))
        rec = json.loads((tmp_path / f"{mode}.onnx.check.json").read_text())["widened"]
        if mode == "auto":
            assert rec["chosen"] in ("widened", "narrow") and rec["narrow_ms"] > 0 and rec["widened_ms"] > 0
            assert "depthwise channel set(s)" in check.summary()
            assert not (tmp_path / "auto.widened.onnx").exists()
        else:
            assert rec is None
    import onnx

    def dw_groups(p):
        return sorted(a.i for n in onnx.load(str(p)).graph.node if n.op_type == "Conv" for a in n.attribute
                      if a.name == "group" and a.i > 1)
    assert dw_groups(tmp_path / "on.onnx") == [24, 32, 48] and dw_groups(tmp_path / "off.onnx") == [24, 24, 40]


def test_openvino_target_is_never_widened(fp32_file, tmp_path):
    from slimzoo.quant.ptq import quantize_onnx

    path, _, _ = quantize_onnx(fp32_file, tmp_path / "ov.onnx", _batches(),
                               PTQConfig(num_calibration=16, pad_channels="on", target="openvino"))
    import onnx

    assert all(a.i in (1, 24, 40) for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"
               for a in n.attribute if a.name == "group")


def test_bad_setting_is_refused():
    with pytest.raises(ConfigError, match="pad_channels"):
        PTQConfig(pad_channels="yes")


def test_qat_file_is_widened_the_same_way(tmp_path):
    import onnx
    import onnxruntime as ort

    import slimzoo
    from slimzoo.quant.qat import QATConfig

    torch.manual_seed(0)
    m = _Net().eval()
    paths = {}
    for mode in ("off", "on"):
        cfg = QATConfig(calibration=PTQConfig(num_calibration=16, pad_channels=mode))
        qat = slimzoo.prepare_qat(m, _batches(), cfg)
        paths[mode] = slimzoo.convert(qat, tmp_path / f"qat_{mode}.onnx").path
    groups = {k: sorted(a.i for n in onnx.load(str(p)).graph.node if n.op_type == "Conv" for a in n.attribute
                        if a.name == "group" and a.i > 1) for k, p in paths.items()}
    assert groups == {"off": [24, 24, 40], "on": [24, 32, 48]}
    x = np.random.default_rng(1).standard_normal((2, 3, 48, 48)).astype(np.float32)
    ya, yb = (ort.InferenceSession(str(paths[k])).run(None, {"input": x})[0] for k in ("off", "on"))
    np.testing.assert_array_equal(ya, yb)


def test_a_widened_file_that_computes_otherwise_is_not_kept(fp32_file, tmp_path, monkeypatch):
    import warnings

    import slimzoo.quant.pad as pad
    from slimzoo.quant.qdq import write_qdq

    prep = _prepared(fp32_file)
    narrow = write_qdq(prep.model, prep.plan, prep.qparams, tmp_path / "narrow.onnx")
    before = narrow.read_bytes()
    real = pad.pad_channels

    def broken(model, plan, qp, block=pad.BLOCK):  # a widening that gets a set wrong: a filter moved
        m, q, report = real(model, plan, qp, block)
        w = next(w for w in q.weights.values() if w.qweight.shape[:2] == (32, 1))
        w.qweight[[0, -1]] = w.qweight[[-1, 0]]
        return m, q, report
    monkeypatch.setattr(pad, "pad_channels", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = pad.choose_padding(prep.model, prep.plan, prep.qparams, narrow, (1, 3, 48, 48))
    assert rec["chosen"] == "narrow" and rec["mismatch"] > 0
    assert any("computed other outputs" in str(w.message) for w in caught)
    assert narrow.read_bytes() == before and not (tmp_path / "narrow.widened.onnx").exists()


def test_a_conv_between_two_widened_sets_reads_and_writes_wider(tmp_path):
    """A pruned MobileNetV1: depthwise (24) -> pointwise (24 -> 40) -> depthwise (40): the pointwise conv is the sink
    of one set and the source of the next, widened on both axes; the file computes the same."""
    import onnxruntime as ort

    from slimzoo.export import export_onnx
    from slimzoo.quant.pad import pad_channels
    from slimzoo.quant.ptq import prepare_ptq
    from slimzoo.quant.qdq import write_qdq

    def dw_pw(cin, cout):
        return [nn.Conv2d(cin, cin, 3, 1, 1, groups=cin), nn.ReLU(), nn.Conv2d(cin, cout, 1), nn.ReLU()]
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.ReLU(), *dw_pw(24, 40), *dw_pw(40, 56), nn.Conv2d(56, 8, 1)).eval()
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    prep = prepare_ptq(fp32, [torch.randn(8, 3, 32, 32)], PTQConfig(num_calibration=8, stem="int8"))
    model, qp, report = pad_channels(prep.model, prep.plan, prep.qparams)
    assert [(w["channels"], w["padded"]) for w in report["widened"]] == [(24, 32), (40, 48)]
    pw = report["widened"][0]["sinks"]
    assert pw == report["widened"][1]["sources"]
    assert next(q for q in qp.weights.values() if q.qweight.shape[2:] == (1, 1) and q.qweight.shape[0] == 48
                ).qweight.shape[1] == 32
    narrow = write_qdq(prep.model, prep.plan, prep.qparams, tmp_path / "narrow.onnx")
    wide = write_qdq(model, prep.plan, qp, tmp_path / "wide.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ya, yb = (ort.InferenceSession(str(p)).run(None, {"input": x})[0] for p in (narrow, wide))
    assert np.abs(ya).max() > 0
    np.testing.assert_array_equal(ya, yb)
