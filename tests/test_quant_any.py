"""INT8 for networks slimzoo was not built for: every weighted layer must run as an integer op in ONNX Runtime."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from slimzoo.quant import Int8Check, PTQConfig, integer_layers, quantize, quantize_onnx


class TwoOutputs(nn.Module):
    """Hardswish, SiLU, a squeeze-excite gate, TF-style zero padding, torch.cat and two outputs."""

    def __init__(self):
        super().__init__()

        def block(cin, cout, act, stride=1, groups=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                                 act())
        self.stem = block(3, 16, nn.Hardswish, 2)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dw = nn.Conv2d(16, 16, 3, 2, groups=16)
        self.a = block(16, 16, nn.SiLU)
        self.b = block(16, 16, nn.Hardswish)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 8, 1), nn.ReLU(), nn.Conv2d(8, 32, 1),
                                nn.Sigmoid())
        self.head = nn.Linear(32, 10)
        self.dense = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.dw(self.pad(self.stem(x)))
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = y * self.se(y)
        return self.head(y.mean((2, 3))), self.dense(y)


class _Normalized(nn.Module):  # normalization inside the graph: Sub and Div before the first layer
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m((x - 0.5) / 0.5)


class _ShapeFromImage(nn.Module):  # the second conv's input is reshaped by the image's (dynamic) shape
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.b(self.a(x).reshape(x.shape[0], 3, -1).reshape(x.shape))


def _warm(m, size=64):
    torch.manual_seed(0)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, size, size))
    return m.eval()


def _batches(size=64, n=2):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, size, size, generator=g) for _ in range(n)]


@pytest.mark.parametrize("make", [TwoOutputs, lambda: __import__("torchvision").models.mobilenet_v3_small(
    num_classes=10)], ids=["custom-two-outputs", "mobilenet_v3_small"])
def test_every_weighted_layer_runs_as_integer_op(tmp_path, make):
    from slimzoo.runtime import ort_session

    m = _warm(make())
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the speed check may find a tiny net not faster: not what this test is about
        path = quantize(m, x, _batches(), tmp_path / "q.onnx", PTQConfig(stem="int8", output_convs="int8"))
    check = integer_layers(path)
    assert check.float_layers == [] and check.integer == check.total > 0, check
    assert (tmp_path / "q.onnx.check.json").exists()
    xt = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = m(xt)
    ref = ref if isinstance(ref, tuple) else (ref,)
    outs = ort_session(path, 1).run(None, {"input": xt.numpy()})
    assert len(outs) == len(ref)
    for r, o in zip(ref, outs):
        assert o.shape == tuple(r.shape)
        assert np.corrcoef(r.numpy().ravel(), o.ravel())[0, 1] > 0.95


def test_zero_pad_before_conv_is_fused_and_exact(tmp_path):
    import onnx

    from slimzoo.export import export_onnx
    from slimzoo.quant.preprocess import fuse_pad_into_conv
    from slimzoo.runtime import ort_session

    m = nn.Sequential(nn.ZeroPad2d((1, 2, 0, 1)), nn.Conv2d(3, 4, 3)).eval()
    path = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 16, 16))
    model = onnx.load(str(path))
    assert fuse_pad_into_conv(model) == 1 and not any(n.op_type == "Pad" for n in model.graph.node)
    onnx.save(model, str(tmp_path / "fused.onnx"))
    x = torch.randn(2, 3, 16, 16)
    np.testing.assert_allclose(ort_session(tmp_path / "fused.onnx", 1).run(None, {"input": x.numpy()})[0],
                               m(x).detach().numpy(), atol=1e-5)


def test_vision_transformer_exports_and_every_linear_is_integer(tmp_path):
    from torchvision.models import VisionTransformer

    m = VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64,
                          num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():  # the MHA fast path, taken under no_grad, must not reach the exporter
        path = quantize(m, x, _batches(32), tmp_path / "vit.onnx", check=False)
    check = integer_layers(path)
    assert check.float_layers == [] and check.integer >= 4, check  # conv_proj, in/out projections, MLP, head
    assert check.activation_matmuls == 2  # attention's two activation x activation MatMuls stay float



class _ControlFlow(nn.Module):
    """torch.fx cannot trace it (a branch on a tensor's value), and two of its convs have identical weights (zero,
    as an untrained residual block's last layer), which the exporter writes once, behind an Identity."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.a, self.b = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 1)
        for c in (self.a, self.b):
            nn.init.zeros_(c.weight)
            nn.init.zeros_(c.bias)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        y = self.stem(x)
        if y.shape[-1] > 4:  # control flow on a traced size
            y = y + self.a(y)
        return self.head((y + self.b(y)).mean((2, 3)))


def test_untraceable_model_with_shared_zero_weights_quantizes_every_layer(tmp_path):
    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.runtime import ort_session

    m = _warm(_ControlFlow())
    x = torch.randn(1, 3, 64, 64)
    folded = fold_batchnorm(m)  # torch.fx fails here: the model comes back unfolded, the exporter folds it
    fp32 = export_onnx(folded, tmp_path / "f.onnx", x)
    import onnx

    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(fp32)).graph.node)
    path = quantize(m, x, _batches(), tmp_path / "q.onnx", PTQConfig(stem="int8"), check=False)
    check = integer_layers(path)
    assert check.float_layers == [] and check.integer == check.total == 4, check
    xt = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(xt).numpy()
    assert np.corrcoef(ref.ravel(), ort_session(path, 1).run(None, {"input": xt.numpy()})[0].ravel())[0, 1] > 0.95


def test_channel_multiplier_convs_stay_float_for_onnx_runtime(tmp_path):
    """One input channel per group, two outputs: ONNX Runtime's int8 kernel for it is several times slower than
    the float one (FastViT); depthwise and dense convs stay integer."""
    import onnx

    from slimzoo.export import export_onnx
    from slimzoo.quant.qdq import channel_multiplier_convs, plan_qdq

    m = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU(),
                      nn.Conv2d(8, 16, 7, 2, 3, groups=8), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    model = onnx.load(str(fp32))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert channel_multiplier_convs(model) == [convs[2]]
    assert plan_qdq(model).kept_fp32 == [convs[2]] and plan_qdq(model, target="openvino").kept_fp32 == []
    path, _, _ = quantize_onnx(fp32, tmp_path / "q.onnx", _batches(32), PTQConfig(stem="int8"))
    check = integer_layers(path)
    assert check.float_layers == [convs[2]] and check.integer == 3, check

class _StdConv(nn.Conv2d):  # weight standardization at run time, as timm's StdConv2d (BiT) and ScaledStdConv2d
    def forward(self, x):
        w = nn.functional.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                                     momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return nn.functional.conv2d(x, w * 0.5, self.bias, self.stride, self.padding, self.dilation, self.groups)


def test_weights_computed_in_the_graph_are_folded_and_quantized(tmp_path):
    import onnx

    from slimzoo.export import export_onnx
    from slimzoo.quant.preprocess import fold_computed_weights
    from slimzoo.runtime import ort_session

    torch.manual_seed(0)
    m = nn.Sequential(_StdConv(3, 8, 3, 1, 1), nn.ReLU(), _StdConv(8, 8, 3, 1, 1, groups=8), nn.ReLU(),
                      nn.Flatten(), nn.Linear(8 * 16 * 16, 4)).eval()
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 16, 16))
    model = onnx.load(str(fp32))
    inits = {i.name for i in model.graph.initializer}
    assert sum(n.input[1] not in inits for n in model.graph.node if n.op_type == "Conv") == 2  # as exported
    assert fold_computed_weights(model) == 2
    inits = {i.name for i in model.graph.initializer}
    assert all(n.input[1] in inits for n in model.graph.node if n.op_type == "Conv")
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]  # what computed them is gone
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = m(x).numpy()
    onnx.save(model, str(tmp_path / "folded.onnx"))
    np.testing.assert_allclose(ort_session(tmp_path / "folded.onnx", 1).run(None, {"input": x.numpy()})[0], ref,
                               rtol=1e-4, atol=1e-5)
    path, _, _ = quantize_onnx(fp32, tmp_path / "q.onnx", _batches(16), PTQConfig(stem="int8"))
    check = integer_layers(path)
    assert check.float_layers == [] and check.integer == 3, check


def test_bias_of_a_near_zero_weight_channel_does_not_saturate(tmp_path):
    """float32(2**31 - 1) == 2**31: clipping in float32 wrapped such biases to INT32_MIN."""
    import onnx
    from onnx import numpy_helper

    from slimzoo.export import export_onnx
    from slimzoo.runtime import ort_session

    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        m[0].weight[1] = 1e-30  # a dead channel: its weight scale hits the floor
        m[0].bias[1] = 5.0
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 8, 8))
    with pytest.warns(UserWarning, match="near-zero weights"):
        path, _, _ = quantize_onnx(fp32, tmp_path / "q.onnx", [torch.rand(8, 3, 8, 8)])
    biases = [numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
              if i.name.endswith("_bias_quantized")]
    assert all(b.min() > -(2**31 - 1) for b in biases)
    x = torch.rand(2, 3, 8, 8)
    np.testing.assert_allclose(ort_session(path, 1).run(None, {"input": x.numpy()})[0], m(x).detach().numpy(),
                               atol=0.15)


def test_adaround_runs_under_no_grad(tmp_path):
    from slimzoo.export import export_onnx

    m = _warm(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)), 16)
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 16, 16))
    with torch.no_grad():
        quantize_onnx(fp32, tmp_path / "q.onnx", [torch.randn(4, 3, 16, 16)],
                      PTQConfig(adaround=True, adaround_iters=5))


def test_calibration_takes_num_calibration_images_from_pairs():
    from slimzoo.quant.ptq import calibration_set

    loader = [(torch.randn(8, 3, 4, 4), torch.zeros(8)) for _ in range(5)]  # a DataLoader of (images, labels)
    cal = calibration_set(loader, 20, 6)
    assert [len(b) for b in cal] == [6, 6, 6, 2]
    np.testing.assert_array_equal(cal[0][:6], loader[0][0][:6].numpy())


def test_openvino_target_skips_quantizers_before_float_ops(tmp_path):
    import onnx

    from slimzoo.export import export_onnx, fold_batchnorm

    m = _warm(TwoOutputs())
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "f.onnx", torch.randn(1, 3, 64, 64), output_names=["o", "d"])
    counts = {}
    for target in ("onnxruntime", "openvino"):
        path, _, _ = quantize_onnx(fp32, tmp_path / f"{target}.onnx", _batches(), PTQConfig(target=target))
        counts[target] = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
    assert counts["openvino"] < counts["onnxruntime"]
    # for OpenVINO: activations on a zero-point-free grid, the Concat's inputs on one scale and no quantizer on its
    # output (OpenVINO concatenates int8 data), and the file still matches the FP32 model
    g = onnx.load(str(tmp_path / "openvino.onnx")).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    qs = [n for n in g.node if n.op_type == "QuantizeLinear"]
    assert all(not inits[n.input[2]].any() for n in qs)
    assert any(inits[n.input[2]].dtype == np.int8 for n in qs)  # a tensor with negative values (SiLU's)
    producers = {o: n for n in g.node for o in n.output}
    cat = next(n for n in g.node if n.op_type == "Concat" and "/mix" not in n.name and all(
        i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input))  # torch.cat([a, b])
    assert len({float(inits[producers[i].input[1]]) for i in cat.input}) == 1
    assert not any(n.input[0] == cat.output[0] for n in qs)
    from slimzoo.runtime import ort_session

    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)[0].numpy()
    out = ort_session(tmp_path / "openvino.onnx", 1).run(None, {"input": x.numpy()})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.95
    with pytest.raises(Exception, match="target"):
        PTQConfig(target="tensorrt")


def test_check_says_plainly_when_int8_is_slower():
    slow = Int8Check(integer=3, total=4, float_layers=["/conv/Conv"], fp32_ms=1.0, int8_ms=2.0)
    problems = slow.problems()
    assert len(problems) == 2 and "/conv/Conv" in problems[0] and "not faster" in problems[1]
    assert Int8Check(integer=4, total=4, fp32_ms=2.0, int8_ms=1.0).problems() == []
    assert "0.50x" in slow.summary()


def test_unexportable_operator_is_named_not_a_traceback(tmp_path):
    from slimzoo.errors import ConfigError
    from slimzoo.export import export_onnx

    class Svd(nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x[0, 0])[1]

    with pytest.raises(ConfigError, match="aten::linalg_svd"):
        export_onnx(Svd(), tmp_path / "x.onnx", torch.randn(1, 3, 8, 8))


def test_every_output_gets_a_name_and_a_dynamic_batch(tmp_path):
    import onnx

    from slimzoo.export import export_onnx

    path = export_onnx(_warm(TwoOutputs()), tmp_path / "two.onnx", torch.randn(1, 3, 64, 64))
    outs = onnx.load(str(path)).graph.output
    assert [o.name for o in outs] == ["output", "output_1"]
    assert all(o.type.tensor_type.shape.dim[0].dim_param == "batch" for o in outs)


def test_non_finite_weights_are_refused_before_anything_is_written(tmp_path):
    from slimzoo.errors import ConfigError
    from slimzoo.export import export_onnx

    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        m[2].weight[0, 0] = float("nan")
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="NaN"):
        quantize_onnx(fp32, tmp_path / "q.onnx", [torch.rand(4, 3, 8, 8)])
    assert not (tmp_path / "q.onnx").exists()


def test_stem_layers_are_the_convs_on_the_image_input(tmp_path):
    import onnx

    from slimzoo.export import export_onnx
    from slimzoo.quant.stem import stem_layers

    m = _warm(TwoOutputs())
    path = export_onnx(m, tmp_path / "fp32.onnx", torch.randn(1, 3, 64, 64))
    stems = stem_layers(onnx.load(str(path)))
    assert len(stems) == 1 and "stem" in stems[0]
    # TF-style "SAME" padding (EfficientNet-Lite) and an in-graph normalization in front of the stem; a conv after
    # a weighted layer is not a stem, even on few channels
    m = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 4, 3, 2), nn.Conv2d(4, 3, 1), nn.Conv2d(3, 3, 1))
    path = export_onnx(_Normalized(m.eval()), tmp_path / "pad.onnx", torch.randn(1, 3, 16, 16))
    model = onnx.load(str(path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert any(n.op_type == "Pad" for n in model.graph.node) and stem_layers(model) == convs[:1]
    # nor is one whose input was reshaped by the image's shape (Shape(image) -> Reshape): a shape is not image data
    path = export_onnx(_ShapeFromImage().eval(), tmp_path / "shape.onnx", torch.randn(1, 3, 16, 16))
    model = onnx.load(str(path))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert any(n.op_type == "Shape" for n in model.graph.node) and stem_layers(model) == convs[:1]
    with pytest.raises(Exception, match="stem must be one of"):
        PTQConfig(stem="fp16")


def test_float_stem_is_kept_on_purpose_and_not_reported_as_a_problem(tmp_path):
    from slimzoo.quant.ptq import quantize_checked
    from slimzoo.export import export_onnx, fold_batchnorm

    m = _warm(TwoOutputs())
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "fp32.onnx", torch.randn(1, 3, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a float-layer Int8Warning would fail the test
        warnings.filterwarnings("ignore", message=".*not faster.*")
        path, check = quantize_checked(fp32, tmp_path / "q.onnx", _batches(), PTQConfig(stem="float"),
                                       (1, 3, 64, 64))
    assert check.kept_float == 1 and len(check.float_layers) == 1 and check.integer == check.total - 1
    assert check.stem is None  # decided without measuring


@pytest.mark.parametrize("float_ms, float_wins", [(0.8, True), (1.02, True), (1.2, False)])
def test_auto_stem_keeps_the_float_stem_unless_int8_is_clearly_faster(tmp_path, monkeypatch, float_ms, float_wins):
    import json

    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant import stem as stem_mod
    from slimzoo.quant.ptq import quantize_checked

    # the timing is the runtime's; what is tested is the decision taken on it: int8 at 1.0 ms against float at
    # 0.8 (faster), 1.02 (a tie: the float stem is the more accurate) or 1.2 ms
    monkeypatch.setattr(stem_mod, "time_files", lambda paths, shape: [1.0, float_ms])
    m = _warm(TwoOutputs())
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "fp32.onnx", torch.randn(1, 3, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, check = quantize_checked(fp32, tmp_path / "q.onnx", _batches(), PTQConfig(), (1, 3, 64, 64))
    assert sorted(p.name for p in tmp_path.glob("q*.onnx")) == ["q.onnx"]  # the other file is gone
    chosen = "float" if float_wins else "int8"
    assert check.stem["chosen"] == chosen and check.kept_float == (1 if float_wins else 0)
    assert len(integer_layers(path).float_layers) == (1 if float_wins else 0)
    assert json.loads((tmp_path / "q.onnx.check.json").read_text())["stem"]["chosen"] == chosen
    assert f"first conv kept in {chosen}" in check.summary()


def test_auto_stem_learns_the_roundings_once_for_both_files(tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant import adaround as ada_mod
    from slimzoo.quant import stem as stem_mod
    from slimzoo.quant.ptq import quantize_checked

    learned = []
    real = ada_mod.adaround
    monkeypatch.setattr(ada_mod, "adaround", lambda *a, **k: learned.append(real(*a, **k)) or learned[-1])
    monkeypatch.setattr(stem_mod, "time_files", lambda paths, shape: [1.0, 0.9])  # the float stem is kept
    m = _warm(TwoOutputs())
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "fp32.onnx", torch.randn(1, 3, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, check = quantize_checked(fp32, tmp_path / "q.onnx", _batches(),
                                       PTQConfig(adaround=True, adaround_iters=20, bias_correction=False),
                                       (1, 3, 64, 64))
    assert len(learned) == 1 and check.stem["chosen"] == "float"
    # the kept file (float stem) holds the roundings learned for the int8-stem file, every other layer's
    written = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer
               if i.data_type == onnx.TensorProto.INT8}
    qp = learned[0]
    stem_w = {n.input[1] for n in onnx.load(str(fp32)).graph.node if n.name in check.stem["layers"]}
    others = [w for w in qp.weights if w not in stem_w]
    assert others and all(any(np.array_equal(qp.weights[w].qweight, v) for v in written.values()) for w in others)
    assert not any(np.array_equal(qp.weights[w].qweight, v) for w in stem_w for v in written.values())


def test_auto_calibration_keeps_the_range_method_that_agrees_more_with_fp32(tmp_path):
    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant import range_choice
    from slimzoo.quant.ptq import quantize_checked

    m = _warm(TwoOutputs())
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "fp32.onnx", torch.randn(1, 3, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, check = quantize_checked(fp32, tmp_path / "q.onnx", _batches(), PTQConfig(calibration="auto",
                                       stem="int8"), (1, 3, 64, 64))
    c = check.calibration
    assert set(c["agreement_pct"]) == set(range_choice.CANDIDATES) and c["images"] == 16
    best = max(range_choice.CANDIDATES, key=lambda k: (c["agreement_pct"][k], c["output_sqnr_db"][k]))
    assert c["chosen"] == best and f"{best} ranges" in check.summary()
    # the criterion ignores a shift of all class scores (softmax does), and counts argmax agreement
    ref = [np.array([[1.0, 2.0, 3.0], [0.0, 5.0, 1.0]])]
    assert range_choice.output_sqnr(ref, [ref[0] + 7.0]) > 100
    assert range_choice.agreement(ref, [np.array([[3.0, 2.0, 1.0], [0.0, 5.0, 1.0]])]) == 50.0


class DenseLike(nn.Module):
    """DenseNet's pattern: a MaxPool, then dense layers whose Concat feeds a pre-activation BatchNorm, each layer's
    output read by every later Concat."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(8 + 4 * k), nn.ReLU(), nn.Conv2d(8 + 4 * k, 4, 3, padding=1))
            for k in range(3))
        self.head = nn.Linear(20, 10)

    def forward(self, x):
        feats = [self.stem(x)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, 1) if len(feats) > 1 else feats[0]))
        return self.head(nn.functional.adaptive_avg_pool2d(torch.cat(feats, 1), 1).flatten(1))


def test_openvino_target_concatenates_int8_before_a_batchnorm(tmp_path):
    """For OpenVINO, a Concat that feeds a BatchNorm (DenseNet) reads quantized inputs that share one range, across
    every Concat of the block, the MaxPool's input included; no quantizer on a Concat's output (measured: DenseNet-121
    in OpenVINO as fast as NNCF's file, 1.3x faster than with the Concat in float)."""
    import onnx

    from slimzoo.export import export_onnx
    from slimzoo.quant.qdq import plan_qdq

    m = _warm(DenseLike())
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    plan = plan_qdq(onnx.load(str(fp32)), target="openvino")
    g = onnx.load(str(fp32)).graph
    cats = [n for n in g.node if n.op_type == "Concat"]
    assert len(cats) == 3 and not any(n.output[0] in plan.activations for n in cats)
    assert len(plan.unified) == 1  # the inputs of all three Concats: one group
    producers = {o: n for n in g.node for o in n.output}
    group = set(plan.unified[0])
    assert sum(producers[t].op_type == "Conv" for t in group) == 3 and len(group) == 4  # + the MaxPool's source
    path, _, _ = quantize_onnx(fp32, tmp_path / "ov.onnx", _batches(32), PTQConfig(target="openvino", stem="int8"))
    q = onnx.load(str(path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in q.initializer}
    qprod = {o: n for n in q.node for o in n.output}
    scales = {float(inits[qprod[i].input[1]]) for n in q.node if n.op_type == "Concat" for i in n.input
              if qprod[i].op_type == "DequantizeLinear"}
    assert len(scales) == 1
    from slimzoo.runtime import ort_session

    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = m(x).numpy()
    out = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.95


def test_openvino_target_quantizes_attention_matmuls(tmp_path):
    """OpenVINO runs attention's activation x activation MatMuls in int8 (ViT-B/16: 144 -> 116 ms at one thread, NNCF's
    file 104 ms); ONNX Runtime is faster with them in float."""
    import onnx

    from slimzoo.export import export_onnx

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

        def forward(self, x):  # an image's pixels as tokens
            q, k, v = self.qkv(x.flatten(2).transpose(1, 2)).chunk(3, -1)
            return self.proj(torch.softmax(q @ k.transpose(1, 2) * 0.25, -1) @ v)

    fp32 = export_onnx(Attn().eval(), tmp_path / "a.onnx", torch.randn(1, 16, 2, 4))

    def int8_inputs(target):  # activation MatMuls whose two inputs both come from a DequantizeLinear
        path, _, _ = quantize_onnx(fp32, tmp_path / f"{target}.onnx", [torch.randn(4, 16, 2, 4)],
                                   PTQConfig(target=target))
        g = onnx.load(str(path)).graph
        inits = {t.name for t in g.initializer}
        producers = {o: n for n in g.node for o in n.output}

        def dequantized(t):
            p = producers.get(t)
            while p is not None and p.op_type in ("Transpose", "Reshape", "Split", "Slice", "Squeeze"):
                p = producers.get(p.input[0])
            return p is not None and p.op_type == "DequantizeLinear"
        mms = [n for n in g.node if n.op_type == "MatMul" and not any(
            i in inits or producers.get(i) is not None and producers[i].input[0] in inits for i in n.input)]
        assert len(mms) == 2
        return sum(all(dequantized(i) for i in n.input) for n in mms)

    assert int8_inputs("openvino") == 2
    assert int8_inputs("onnxruntime") == 0


def test_a_layer_kept_in_float_stays_float_in_onnx_runtime(tmp_path):
    """ONNX Runtime quantizes a float conv that reads a DequantizeLinear by itself, with per-tensor int8 weights; a
    layer kept in float must run as written: the optimized session computes what the unoptimized one does."""
    import onnx
    import onnxruntime as ort

    from slimzoo.export import export_onnx

    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                      nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():  # channel weight ranges 1e-3 .. 10: per-tensor int8 rounds the small ones to zero
        m[2].weight.mul_(torch.logspace(-3, 1, 8).view(8, 1, 1, 1))
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 16, 16))
    kept = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv" and "2" in n.name)
    path, _, _ = quantize_onnx(fp32, tmp_path / "q.onnx", [torch.randn(8, 3, 16, 16)],
                               PTQConfig(keep_fp32=[kept], stem="int8"))
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)

    def run(level):
        so = ort.SessionOptions()
        so.graph_optimization_level, so.log_severity_level = level, 3
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    as_written = run(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    optimized = run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    np.testing.assert_allclose(optimized, as_written, atol=1e-3 * float(np.abs(as_written).max()))


class _TwoFloatReaders(nn.Module):  # ResNet's first block: one tensor read by two convs (main path, downsample)
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.a(y) + self.b(y)


def test_two_float_layers_reading_one_quantized_tensor_share_its_per_channel_twin(tmp_path):
    """Both readers kept in float (as the per-layer analysis does, one layer quantized at a time): one twin
    DequantizeLinear, a valid file (a duplicate initializer name made the zoo's ResNet50 analysis fail)."""
    import onnx

    from slimzoo.export import export_onnx

    torch.manual_seed(0)
    m = _TwoFloatReaders().eval()
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 16, 16))
    readers = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"][1:]
    path, _, _ = quantize_onnx(fp32, tmp_path / "q.onnx", [torch.randn(8, 3, 16, 16)],
                               PTQConfig(keep_fp32=readers, stem="int8"))
    q = onnx.load(str(path))
    onnx.checker.check_model(q)
    twins = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0].endswith("_per_channel")]
    assert len(twins) == 1
    assert sorted(n.name for n in q.graph.node if n.op_type == "Conv" and n.input[0] == twins[0].output[0]) \
        == sorted(readers)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = m(x).numpy()
    from slimzoo.runtime import ort_session

    out = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99


class _MeanPooled(nn.Module):  # x.mean over H, W: a squeeze-excite gate (keepdim) and the final pooling (no keepdim)
    def __init__(self):
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(3, 16, 3, 2, 1), nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(x.mean((-2, -1)))


def _rewrite_is_exact(m, tmp_path, rewrite, op_type: str, count: int):
    """Export ``m``; the graph holds ``count`` ``op_type`` nodes, ``rewrite`` replaces them all, and the rewritten graph
    computes what ``m`` does. Returns the exported FP32 file."""
    import onnx

    from slimzoo.export import export_onnx
    from slimzoo.runtime import ort_session

    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    model = onnx.load(str(fp32))
    assert sum(n.op_type == op_type for n in model.graph.node) == count  # as exported
    assert rewrite(model) == count
    assert not [n for n in model.graph.node if n.op_type == op_type]
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = m(x).numpy()
    np.testing.assert_allclose(ort_session(tmp_path / "rewritten.onnx", 1).run(None, {"input": x.numpy()})[0], ref,
                               rtol=1e-4, atol=1e-5)
    return fp32


def test_spatial_reduce_means_become_integer_global_pools(tmp_path):
    from slimzoo.quant.check import _optimized_graph
    from slimzoo.quant.preprocess import reduce_means_to_global_pools

    fp32 = _rewrite_is_exact(_MeanPooled().eval(), tmp_path, reduce_means_to_global_pools, "ReduceMean", 2)
    path, _, _ = quantize_onnx(fp32, tmp_path / "q.onnx", _batches(32), PTQConfig(stem="int8"))
    ops = [n.op_type for n in _optimized_graph(path).node]
    assert ops.count("QLinearGlobalAveragePool") == 2 and "ReduceMean" not in ops and "GlobalAveragePool" not in ops


@pytest.mark.parametrize("batch", [1, 2])
def test_a_file_with_a_fixed_batch_is_calibrated_and_checked_at_that_batch(tmp_path, batch):
    """torch.onnx.export's default exporter writes batch 1 into the file; calibration batches are larger."""
    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant.ptq import quantize_checked
    from slimzoo.runtime import ort_session

    m = _warm(TwoOutputs(), 32)
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "f.onnx", torch.randn(batch, 3, 32, 32), dynamic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, check = quantize_checked(fp32, tmp_path / "q.onnx", _batches(32), PTQConfig(calibration="auto"),
                                       (1, 3, 32, 32))
    assert check.float_layers == [] or check.kept_float == len(check.float_layers)
    assert check.int8_ms > 0 and check.calibration["images"] > 0
    x = _batches(32)[0][:batch].numpy()
    out = ort_session(path, 1).run(None, {"input": x})[0]
    with torch.no_grad():
        ref = m(torch.from_numpy(x))[0].numpy()
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.95
    if batch > 1:  # fewer calibration images than the file's batch; a check asked at batch 1 (the CLI's --analyze)
        quantize_onnx(fp32, tmp_path / "r.onnx", [torch.randn(1, 3, 32, 32)], PTQConfig(stem="int8"))
        from slimzoo.quant.check import check_int8

        assert check_int8(fp32, tmp_path / "r.onnx", (1, 3, 32, 32)).int8_ms > 0


def test_a_file_placed_for_openvino_is_checked_in_openvino(tmp_path):
    """Counting and timing an OpenVINO-placed file in ONNX Runtime said 9 of 41 layers integer and 0.42x on
    ConvNeXt-Atto, where OpenVINO runs all 41 in int8."""
    pytest.importorskip("openvino")
    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant.ptq import quantize_checked

    m = _warm(TwoOutputs())
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "fp32.onnx", torch.randn(1, 3, 64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, check = quantize_checked(fp32, tmp_path / "q.onnx", _batches(), PTQConfig(target="openvino"),
                                    (1, 3, 64, 64))
    assert check.runtime == "openvino" and "in OpenVINO" in check.summary()
    assert check.total == 8 and check.integer == 8, check  # every conv and the Linear, as OpenVINO runs them
    assert check.int8_ms > 0 and check.fp32_ms > 0
    slow = Int8Check(integer=1, total=1, fp32_ms=1.0, int8_ms=2.0, runtime="openvino")
    assert any("in OpenVINO" in p and "--target onnxruntime" in p for p in slow.problems())


class _LinearAttention(nn.Module):
    """EfficientViT's ReLU linear attention: q @ (k^T [v, 1]), divided by its own last column; and a softmax
    attention whose scores are divided by a constant (as HuggingFace's ViT writes the scaling)."""

    def __init__(self, linear: bool):
        super().__init__()
        self.linear = linear
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x):
        q, k, v = self.qkv(x.flatten(2).transpose(1, 2)).chunk(3, -1)
        if not self.linear:
            return self.proj(torch.softmax(q @ k.transpose(1, 2) / 4.0, -1) @ v)
        q, k = torch.relu(q), torch.relu(k)
        v = nn.functional.pad(v, (0, 1), value=1.0)
        out = q @ (k.transpose(1, 2) @ v)
        return self.proj(out[..., :-1] / (out[..., -1:] + 1e-6))


@pytest.mark.parametrize("linear", [True, False])
def test_openvino_leaves_attention_divided_by_itself_in_float(tmp_path, linear):
    """int8 MatMuls in linear attention cost timm's EfficientViT-B0 14 dB of output SQNR (36.4 -> 22.5 dB)."""
    import onnx

    from slimzoo.export import export_onnx
    from slimzoo.quant.qdq import plan_qdq

    fp32 = export_onnx(_LinearAttention(linear).eval(), tmp_path / "a.onnx", torch.randn(1, 16, 2, 4))
    model = onnx.load(str(fp32))
    inits = {i.name for i in model.graph.initializer}
    mms = {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in inits}
    assert len(mms) == 2
    plan = plan_qdq(model, target="openvino")
    quantized_inputs = sum(n.input[0] in plan.activations or n.input[0] in plan.shared
                           for n in model.graph.node if n.name in mms)
    assert quantized_inputs == (0 if linear else 2)


def test_channel_shuffles_export_as_one_gather_for_any_batch_and_size(tmp_path):
    """ShuffleNet's x.size() -> view -> transpose -> view: a dozen shape ops per shuffle in the exported graph."""
    import onnx
    import torchvision

    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.runtime import ort_session

    m = _warm(torchvision.models.shufflenet_v2_x0_5(num_classes=4), 32)
    path = export_onnx(fold_batchnorm(m), tmp_path / "s.onnx", torch.randn(1, 3, 32, 32))
    g = onnx.load(str(path)).graph
    assert sum(n.name.endswith("_shuffle") and n.op_type == "Gather" for n in g.node) == 16
    assert not [n for n in g.node if n.op_type == "Transpose"]
    s = ort_session(path, 1)
    for shape in [(1, 3, 32, 32), (3, 3, 48, 40)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = m(x).numpy()
        np.testing.assert_allclose(s.run(None, {"input": x.numpy()})[0], ref, rtol=1e-4, atol=1e-5)


def test_batchnorms_no_conv_absorbed_become_integer_depthwise_convs(tmp_path):
    """DenseNet's pre-activation BatchNorms (after a Concat) are the per-channel affine map of a 1x1 depthwise conv:
    rewritten so, exactly, they run as integer convs in ONNX Runtime instead of in float between Q/DQ (DenseNet-121:
    32.3 -> 24.0 ms at one thread, docs/quantization.md); OpenVINO's placement keeps them (it folds them itself)."""
    import onnx

    from slimzoo.quant.check import _optimized_graph, integer_layers
    from slimzoo.quant.preprocess import batchnorms_to_depthwise
    from slimzoo.runtime import ort_session

    m = _warm(DenseLike())
    fp32 = _rewrite_is_exact(m, tmp_path, batchnorms_to_depthwise, "BatchNormalization", 3)  # nothing to fold into
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = m(x).numpy()
    path, _, _ = quantize_onnx(fp32, tmp_path / "q.onnx", _batches(32), PTQConfig(stem="int8"))
    ops = [n.op_type for n in _optimized_graph(path).node]
    assert "BatchNormalization" not in ops and ops.count("QLinearConv") == 1 + 3 + 3
    c = integer_layers(path)
    assert c.integer == c.total == 1 + 3 + 3 + 1  # stem, 3 depthwise BatchNorms, 3 convs, head
    out = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.95
    ov, _, _ = quantize_onnx(fp32, tmp_path / "ov.onnx", _batches(32), PTQConfig(target="openvino", stem="int8"))
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(str(ov)).graph.node) == 3


def test_a_max_pool_after_a_float_stem_stays_float(tmp_path):
    """conv -> ReLU -> MaxPool with the conv in float: ONNX Runtime would move the QuantizeLinear after the MaxPool up
    before it and run a slow uint8 MaxPool in NCHW (SqueezeNet's float-stem file 12.1 ms against 3.5 ms); the
    writer's ReLU after the MaxPool keeps it float, and the file computes the same."""
    from slimzoo.export import export_onnx
    from slimzoo.quant.check import _optimized_graph
    from slimzoo.runtime import ort_session

    m = _warm(nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(16, 8, 3), nn.ReLU(),
                            nn.Conv2d(8, 4, 1)), 32)
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    path, _, _ = quantize_onnx(fp32, tmp_path / "q.onnx", _batches(32), PTQConfig(stem="float"))
    g = _optimized_graph(path)
    producer = {o: n for n in g.node for o in n.output}
    pool = next(n for n in g.node if n.op_type == "MaxPool")
    assert producer[pool.input[0]].op_type != "QuantizeLinear"  # the MaxPool reads float data
    assert [n.op_type for n in g.node if pool.output[0] in n.input] == ["QuantizeLinear"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = m(x).numpy()
    out = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99


class _Fire(nn.Module):  # SqueezeNet's fire module: two expand convs concatenated, then a conv reading the Concat
    def __init__(self, wide: float, batches):
        super().__init__()
        torch.manual_seed(0)
        self.squeeze = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.e1, self.e3 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)
        with torch.no_grad():  # the branches' ranges on the calibration images set to 1 and ``wide``
            for conv, top in ((self.e1, 1.0), (self.e3, wide)):
                peak = max(float(torch.relu(conv(self.squeeze(b))).max()) for b in batches)
                conv.weight *= top / peak
                conv.bias *= top / peak

    def forward(self, x):
        s = self.squeeze(x)
        return self.head(torch.cat([torch.relu(self.e1(s)), torch.relu(self.e3(s))], 1))


def _concat_qparams(path) -> tuple[set, set]:
    """(scale, zero point) of the DequantizeLinear nodes feeding the Concat, and of the QuantizeLinear after it."""
    import onnx

    g = onnx.load(str(path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    cat = next(n for n in g.node if n.op_type == "Concat")

    def qp(n):
        return float(inits[n.input[1]]), int(inits[n.input[2]])
    ins = {qp(producer[i]) for i in cat.input}
    outs = {qp(n) for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == cat.output[0]}
    return ins, outs


@pytest.mark.parametrize("wide, shared", [(1.5, True), (4.0, False)])
def test_concat_inputs_share_the_output_range_where_their_ranges_are_close(tmp_path, wide, shared):
    """ONNX Runtime's QLinearConcat copies an input whose scale and zero point are the output's and re-quantizes the
    others through a lookup table (SqueezeNet-1.1: 3.16 -> 2.57 ms with them shared). Inputs within 2x of each
    other's range go on one range with the output; wider spreads keep their own (precision of the narrow one)."""
    from slimzoo.export import export_onnx
    from slimzoo.quant.qdq import CONCAT_SPREAD
    from slimzoo.runtime import ort_session

    assert CONCAT_SPREAD == 2.0
    m = _Fire(wide, _batches(32)).eval()
    fp32 = export_onnx(m, tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    path, _, _ = quantize_onnx(fp32, tmp_path / "q.onnx", _batches(32), PTQConfig(stem="int8", calibration="minmax"))
    ins, outs = _concat_qparams(path)
    assert len(outs) == 1
    assert (ins == outs) if shared else (len(ins) == 2)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = m(x).numpy()
    out = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.99


class _TinyYolo(nn.Module):
    """A detector's head: raw predictions (box offsets near 0, class logits near +-12) on one output grid, decoded in
    the graph (sigmoid for the centre, exp for the size) as the zoo's YOLOv3 does."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU())
        self.pred = nn.Conv2d(64, 2 * 7, 1)  # 2 anchors x (x, y, w, h, objectness, 2 classes)
        with torch.no_grad():
            self.pred.weight.mul_(10.0)  # box offsets about +-0.5 on these inputs
            self.pred.bias.copy_(torch.tensor([0, 0, 0, 0, 0, 12, -12] * 2, dtype=torch.float32))

    def forward(self, x):
        p = self.pred(self.body(x))
        n, _, h, w = p.shape
        p = p.reshape(n, 2, 7, h, w).permute(0, 1, 3, 4, 2)
        return torch.cat([torch.sigmoid(p[..., :2]), torch.exp(p[..., 2:4].clamp(max=8)),
                          torch.sigmoid(p[..., 4:])], -1).reshape(n, -1, 7)


def test_a_detectors_prediction_conv_stays_float_so_boxes_are_not_rounded(tmp_path):
    from slimzoo.quant.qdq import output_convs, plan_qdq
    from slimzoo.runtime import ort_session

    m = _TinyYolo().eval()
    x = torch.randn(1, 3, 64, 64)
    xt = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        ref = m(xt).numpy()
    errs = {}
    for mode in ("float", "int8"):
        path = quantize(m, x, _batches(), tmp_path / f"{mode}.onnx", PTQConfig(stem="int8", output_convs=mode),
                        check=False)
        check = integer_layers(path)
        assert check.total == 4 and check.integer == (3 if mode == "float" else 4), check
        out = ort_session(path, 1).run(None, {"input": xt.numpy()})[0]
        errs[mode] = float(np.abs(out[..., 2:4] / ref[..., 2:4] - 1).mean())  # relative error of box sizes
    # one uint8 grid spanning the class logits' +-12 rounds the size offsets by up to 24/255/2, which exp() makes
    # up to 5% of a box's size (2.6% on average here); in float only the inputs' rounding is left (0.4%)
    assert errs["float"] < 0.01 and errs["int8"] > 4 * errs["float"], errs
    import onnx

    from slimzoo.export import export_onnx

    model = onnx.load(str(export_onnx(m, tmp_path / "fp32.onnx", x)))
    pred = [n.name for n in model.graph.node if n.op_type == "Conv"][-1]
    assert output_convs(model) == [pred]
    assert pred in plan_qdq(model).kept_fp32 and plan_qdq(model, output_float=False).kept_fp32 == []
    assert plan_qdq(model, target="openvino").kept_fp32 == []  # there the conv's output is not quantized anyway


def test_a_conv_before_a_float_activation_and_a_large_output_conv_stay_integer(tmp_path):
    import onnx

    from slimzoo.export import export_onnx
    from slimzoo.quant.qdq import output_convs

    # conv -> Hardswish -> conv: the first conv's output reaches an integer conv; the last holds most weights
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), nn.Conv2d(8, 64, 3)).eval()
    model = onnx.load(str(export_onnx(m, tmp_path / "fp32.onnx", torch.randn(1, 3, 16, 16))))
    assert output_convs(model) == []
