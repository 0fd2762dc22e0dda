import collections

import numpy as np
import pytest
import torch

import slimzoo
from slimzoo.quant import PTQConfig
from slimzoo.quant.qparams import activation_qparams, quantize_bias, weight_qparams


def test_activation_qparams_cover_range_and_zero():
    qp = activation_qparams(-1.0, 3.0)
    assert qp.scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert 0 <= qp.zero_point <= 255
    assert qp.scale * (0 - qp.zero_point) == pytest.approx(-1.0, abs=qp.scale)
    relu = activation_qparams(0.0, 6.0)  # post-ReLU tensors: zero point 0, so uint8 clamps at zero
    assert relu.zero_point == 0
    assert activation_qparams(0.0, 0.0).scale > 0  # a dead tensor still gets a valid scale
    # symmetric (--target openvino): zero point 0, int8 where the tensor has negative values, uint8 where not
    sym = activation_qparams(-1.0, 3.0, symmetric=True)
    assert sym.signed and sym.zero_point == 0 and sym.scale == pytest.approx(3.0 / 127, rel=1e-6)
    assert sym.qrange == (-128, 127) and sym.dtype == np.int8
    pos = activation_qparams(0.0, 6.0, symmetric=True)
    assert not pos.signed and pos.zero_point == 0 and pos.scale == pytest.approx(6.0 / 255, rel=1e-6)


def test_weight_qparams_per_channel_symmetric():
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w[2] *= 100
    qp = weight_qparams(w)
    assert qp.scale.shape == (4,) and qp.qweight.dtype == np.int8
    assert np.abs(qp.qweight).max() == 127
    err = np.abs(qp.dequantize() - w).max(axis=(1, 2, 3))
    assert np.all(err <= qp.scale / 2 + 1e-6)


def test_bias_quantized_on_accumulator_scale():
    b = np.array([0.5, -0.25], np.float32)
    q, s = quantize_bias(b, 0.1, np.array([0.01, 0.02], np.float32))
    assert q.dtype == np.int32
    np.testing.assert_allclose(s, [0.001, 0.002], rtol=1e-6)
    np.testing.assert_allclose(q * s, b, atol=1e-6)


def _calibrated_model(name):
    torch.manual_seed(0)
    m = slimzoo.create_model(name, num_classes=10, width_mult=0.5)
    m.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            m(torch.randn(16, 3, 48, 48))
    return m.eval()


@pytest.mark.parametrize("name", slimzoo.list_models(task="classification"))
def test_qdq_file_runs_integer_kernels_and_matches_fp32(tmp_path, name):
    import onnx

    from slimzoo.export import export_onnx
    from slimzoo.quant import quantize
    from slimzoo.runtime import ort_session

    m = _calibrated_model(name)
    x = torch.randn(1, 3, 48, 48)
    fp32 = export_onnx(m, tmp_path / "fp32.onnx", x)
    batches = [torch.randn(8, 3, 48, 48) for _ in range(4)]
    int8 = quantize(m, x, batches, tmp_path / "int8.onnx", PTQConfig(stem="int8"))
    sess = ort_session(int8, 1, optimized_model_path=str(tmp_path / "opt.onnx"))
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    # every convolution runs as an integer kernel, none falls back to float
    assert ops["QLinearConv"] > 0 and ops["Conv"] == 0 and ops["FusedConv"] == 0, ops
    xt = torch.randn(4, 3, 48, 48)
    ref = m(xt).detach().numpy()
    out = sess.run(None, {"input": xt.numpy()})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.98
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size


def test_mse_range_beats_minmax_on_heavy_tails():
    from slimzoo.quant.calibrate import BINS, mse_range

    x = np.random.default_rng(0).laplace(0, 1, 200_000)
    edges = np.linspace(x.min(), x.max(), BINS + 1)
    hist, _ = np.histogram(x, bins=edges)
    lo, hi = mse_range(hist, edges)
    assert x.min() < lo < 0 < hi < x.max()  # the tails are clipped

    def mse(a, b):
        s = (b - a) / 255
        q = np.clip(np.round((x - a) / s), 0, 255) * s + a
        return float(((q - x) ** 2).mean())

    assert mse(lo, hi) < 0.85 * mse(x.min(), x.max())


def test_entropy_threshold_ignores_relu_zeros():
    from slimzoo.quant.calibrate import BINS, entropy_threshold

    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(500_000), np.abs(rng.normal(0, 1, 200_000))])
    edges = np.linspace(0, x.max(), BINS + 1)
    hist, _ = np.histogram(x, bins=edges)
    t = entropy_threshold(hist, edges)
    assert 2.0 < t <= x.max()  # the zero spike must not drag the threshold into the bulk


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "entropy"])
def test_calibration_methods_give_valid_ranges(tmp_path, method):
    import onnx

    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant.calibrate import collect_ranges
    from slimzoo.quant.qdq import plan_qdq

    m = _calibrated_model("mobilenet_v2")
    path = export_onnx(fold_batchnorm(m), tmp_path / "f.onnx", torch.randn(1, 3, 48, 48))
    model = onnx.load(str(path))
    plan = plan_qdq(model)
    batches = [torch.randn(8, 3, 48, 48) for _ in range(2)]
    ranges = collect_ranges(model, plan.activations, batches, method=method)
    mm = collect_ranges(model, plan.activations, batches, method="minmax")
    assert set(ranges) == set(plan.activations)
    for t, (lo, hi) in ranges.items():
        assert lo <= hi and lo >= mm[t][0] - 1e-5 and hi <= mm[t][1] + 1e-5  # never wider than min-max


def test_shared_bias_initializer_is_quantized_per_conv(tmp_path):
    """The exporter dedups equal biases behind Identity nodes; each conv still gets its own int32 bias."""
    import onnx

    from slimzoo.quant import quantize
    from slimzoo.runtime import ort_session

    m = slimzoo.create_model("mobilenet_v1", num_classes=10, width_mult=0.25).eval()  # untrained: equal biases
    x = torch.randn(1, 3, 32, 32)
    path = quantize(m, x, [torch.randn(4, 3, 32, 32)], tmp_path / "q.onnx", PTQConfig(stem="int8"))
    ort_session(path, 1, optimized_model_path=str(tmp_path / "opt.onnx"))
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["Conv"] == 0 and ops["QLinearConv"] == 27, ops


def test_keep_fp32_by_module_name(tmp_path):
    import onnx

    from slimzoo.quant import PTQConfig, quantize
    from slimzoo.runtime import ort_session

    m = _calibrated_model("mobilenet_v1")
    x = torch.randn(1, 3, 48, 48)
    path = quantize(m, x, [torch.randn(4, 3, 48, 48)], tmp_path / "q.onnx",
                    PTQConfig(keep_fp32=["features.0.0", "fc"]))
    ort_session(path, 1, optimized_model_path=str(tmp_path / "opt.onnx"))
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["QLinearConv"] == 26 and ops["QGemm"] == 0, ops


def test_per_layer_analysis_and_accuracy_aware(tmp_path):
    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant.analysis import analyze_layers, keep_fewest_fp32, plot_analysis
    from slimzoo.runtime import ort_session

    m = _calibrated_model("mobilenet_v1")
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "f.onnx", torch.randn(1, 3, 48, 48))
    batches = [torch.randn(8, 3, 48, 48) for _ in range(2)]
    xs = torch.randn(16, 3, 48, 48).numpy()
    ref = ort_session(fp32, 1).run(None, {"input": xs})[0]

    def agreement(path) -> float:  # a task-free "metric": % of argmax agreeing with FP32
        out = ort_session(path, 1).run(None, {"input": xs})[0]
        return 100.0 * float((out.argmax(1) == ref.argmax(1)).mean())

    a = analyze_layers(fp32, batches, agreement, progress=False)
    assert a["fp32_metric"] == 100.0
    assert len(a["layers"]) == 28 and {"name", "module", "op", "sqnr_db", "metric_delta"} <= set(a["layers"][0])
    assert all(r["sqnr_db"] > 5 for r in a["layers"]), [(r["name"], r["sqnr_db"]) for r in a["layers"]]
    path, kept, metric = keep_fewest_fp32(fp32, batches, agreement, tmp_path / "aa.onnx", 0.0, a)
    assert metric == 100.0 and path.is_file()
    png = plot_analysis(a, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_qat_onnx_agrees_with_fake_quant_model(tmp_path, trained_classifier):
    """The INT8 file written from QAT predicts like the PyTorch fake-quant model (>= 99% agreement)."""
    from slimzoo.quant.qat import QATConfig, quantize_aware_train
    from slimzoo.runtime import ort_session

    task, model = trained_classifier
    path, qmod = quantize_aware_train(model, task.example_inputs(), task.train_loader(), task.loss_fn,
                                      task.calibration_batches(32), tmp_path / "qat.onnx",
                                      QATConfig(epochs=1, lr=1e-3, max_steps=4, freeze_ranges_at=0.5),
                                      progress=False)
    sess = ort_session(path, 1)
    agree = total = 0
    with torch.no_grad():
        for images, _ in task.val_loader():
            a = qmod(images).argmax(1).numpy()
            b = sess.run(None, {"input": images.numpy()})[0].argmax(1)
            agree += int((a == b).sum())
            total += len(a)
    assert total == 48 and agree / total >= 0.99
    # weights were really trained: they moved away from the folded FP32 weights
    from slimzoo.export import fold_batchnorm

    folded = fold_batchnorm(model).state_dict()
    trained = qmod.float_initializers()
    assert not np.allclose(trained["features.0.0.weight"], folded["features.0.0.weight"].numpy())


def test_cross_layer_equalization_preserves_function_and_balances_ranges(tmp_path):
    import onnx
    from onnx import numpy_helper

    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant.equalize import equalization_pairs, equalize_cross_layer
    from slimzoo.runtime import ort_session

    m = _calibrated_model("mobilenet_v1")
    with torch.no_grad():  # make channel ranges very unequal, as real depthwise layers are
        m.features[1].dw[0].weight.mul_(torch.logspace(-2, 1, m.features[1].dw[0].weight.shape[0])[:, None, None, None])
    path = export_onnx(fold_batchnorm(m), tmp_path / "f.onnx", torch.randn(1, 3, 48, 48))
    model = onnx.load(str(path))
    pairs = equalization_pairs(model)
    assert len(pairs) == 26  # every conv but the last feeds the next one through a ReLU
    eq = equalize_cross_layer(model)
    onnx.save(eq, str(tmp_path / "eq.onnx"))
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    a = ort_session(path, 1).run(None, {"input": x})[0]
    b = ort_session(tmp_path / "eq.onnx", 1).run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)

    def spread(mp, name):
        w = {i.name: numpy_helper.to_array(i) for i in mp.graph.initializer}[name]
        r = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
        return r.max() / r.min()

    dw = pairs[1][0].input[1]  # the first depthwise conv's weight
    assert spread(eq, dw) < 0.5 * spread(model, dw)


def test_bias_correction_removes_mean_output_shift(tmp_path):
    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant import PTQConfig, quantize_onnx
    from slimzoo.runtime import ort_session

    m = _calibrated_model("mobilenet_v2")
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "f.onnx", torch.randn(1, 3, 48, 48))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 3, 48, 48, generator=gen) for _ in range(4)]
    ref = np.concatenate([ort_session(fp32, 1).run(None, {"input": b.numpy()})[0] for b in batches])
    shift = {}
    for bc in (False, True):
        p, qp, _ = quantize_onnx(fp32, tmp_path / f"q{bc}.onnx", batches, PTQConfig(bias_correction=bc))
        assert bool(qp.biases) == bc
        out = np.concatenate([ort_session(p, 1).run(None, {"input": b.numpy()})[0] for b in batches])
        shift[bc] = float(np.abs((out - ref).mean(axis=0)).mean())
    assert shift[True] < shift[False]
    # "depthwise" (the default) corrects the depthwise convs' biases and leaves every other layer's alone
    _, qp, _ = quantize_onnx(fp32, tmp_path / "qdw.onnx", batches, PTQConfig())
    import onnx

    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1)
              for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"}
    assert qp.biases and all(groups.get(name, 1) > 1 for name in qp.biases)
    assert len(qp.biases) == sum(g > 1 for g in groups.values())
    with pytest.raises(Exception, match="bias_correction"):
        PTQConfig(bias_correction="pointwise")


@pytest.mark.parametrize("kind", ["normal", "relu", "relu6", "ties", "constant", "small"])
def test_percentile_pair_equals_numpy(kind):
    from slimzoo.quant.calibrate import percentile_pair

    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 64, 16, 16) if kind != "small" else (7, 9)).astype(np.float32) * 3
    if kind == "relu":
        x = np.maximum(x, 0)
    elif kind == "relu6":  # spikes at both ends
        x = np.clip(x, 0, 2.0)
    elif kind == "ties":
        x = np.round(x * 4) / 4
    elif kind == "constant":
        x[:] = 3.0
    for p in (99.99, 99.9, 99.0, 95.0):
        assert percentile_pair(x, p) == tuple(np.percentile(x, [100 - p, p]))  # bit for bit


@pytest.mark.parametrize("op,groups,stride,dilation,pads,kernel", [
    ("Conv", 1, 1, 1, 1, 3), ("Conv", 6, 2, 1, 1, 3), ("Conv", 2, 2, 2, 2, 3), ("Conv", 1, 1, 1, 0, 1),
    ("Conv", 3, 2, 1, 2, 5), ("Gemm", 1, 1, 1, 0, 0)])
def test_adaround_objective_from_second_moments_is_the_mean_output_error(op, groups, stride, dilation, pads, kernel):
    """AdaRound optimises ``tr(W~ A W~^T) - 2 tr(W~ B W^T)`` from input second moments computed once: up to the
    constant ``E|W x|^2`` this must be the mean over every image and position of the squared output error summed
    over channels, for grouped, strided, dilated and padded convs and for a Gemm."""
    import onnx.helper as oh

    from slimzoo.quant.adaround import _fake_quant, _layer_fn, _second_moments, _weight_groups
    from slimzoo.quant.qparams import TensorQParams

    gen = torch.Generator().manual_seed(0)
    if op == "Conv":
        node = oh.make_node("Conv", ["x", "w"], ["y"], name="c", strides=[stride] * 2, dilations=[dilation] * 2,
                            pads=[pads] * 4, group=groups)
        x, w = torch.rand(5, 6, 13, 11, generator=gen) * 4, torch.randn(12, 6 // groups, kernel, kernel, generator=gen)
    else:
        node = oh.make_node("Gemm", ["x", "w", "b"], ["y"], name="g", transB=1)
        x, w = torch.rand(40, 16, generator=gen) * 4, torch.randn(7, 16, generator=gen)
    aq = TensorQParams(scale=0.05, zero_point=0)
    wq = w + 0.1 * torch.randn(w.shape, generator=gen)
    fn = _layer_fn(node)
    err = fn(_fake_quant(x, aq), wq) - fn(x, w)
    direct = float((err.pow(2).sum(1).mean()).double())
    groups = _weight_groups(node, w).shape[0]
    a, b = _second_moments(node, x, _fake_quant(x, aq), groups, tuple(w.shape[2:]), images_per_pass=2)
    g, gq = _weight_groups(node, w).double(), _weight_groups(node, wq).double()
    const = float(fn(x, w).double().pow(2).sum(1).mean())
    via_moments = float(((gq @ a.double()) * gq).sum() - 2 * (gq * (g @ b.double().transpose(1, 2))).sum()) + const
    assert via_moments == pytest.approx(direct, rel=1e-4)


def test_adaround_rounds_to_a_neighbour_and_lowers_layer_error(tmp_path):
    """Learned rounding picks floor or ceil of every weight. From FP32 inputs through their own quantizer it fits
    each layer's FP32 output better than round-to-nearest; from the inputs of the quantized network (the default)
    the network's output gets closer to FP32; the file it writes runs and stays close to FP32."""
    import copy

    import onnx
    from onnx import numpy_helper

    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant import PTQConfig
    from slimzoo.quant.adaround import AdaRoundConfig, _fake_quant, _layer_fn, adaround
    from slimzoo.quant.calibrate import iterate_tensors
    from slimzoo.quant.ptq import prepare_ptq
    from slimzoo.quant.qdq import write_qdq
    from slimzoo.runtime import ort_session

    m = _calibrated_model("mobilenet_v2")
    fp32 = export_onnx(fold_batchnorm(m), tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 3, 32, 32, generator=gen) for _ in range(2)]
    arrays = [b.numpy() for b in batches]
    prep = prepare_ptq(fp32, batches, PTQConfig(bias_correction=False))
    plan, rtn = prep.plan, prep.qparams
    ada_fp = adaround(prep.model, plan, copy.deepcopy(rtn), arrays, AdaRoundConfig(iters=30, quantized_inputs=False))
    ada_q = adaround(prep.model, plan, copy.deepcopy(rtn), arrays, AdaRoundConfig(iters=30))
    model = onnx.load(str(fp32))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    for ada in (ada_fp, ada_q):
        changed = 0
        for w, (axis, _) in plan.weights.items():
            shape = [1] * inits[w].ndim
            shape[axis] = -1
            exact = inits[w] / rtn.weights[w].scale.reshape(shape)
            assert np.all(np.abs(ada.weights[w].qweight - exact) < 1 + 1e-4)  # floor or ceil, never further
            changed += int((ada.weights[w].qweight != rtn.weights[w].qweight).sum())
        assert changed > 0
    # the summed output error of the layers (FP32 inputs, quantized activations) is lower than with rounding
    err = {"rtn": 0.0, "ada": 0.0}
    xs = {n.input[0] for w, (_, name) in plan.weights.items() if (n := nodes[name]) is not None}
    for t, v in iterate_tensors(model, sorted(xs), arrays):
        x = torch.from_numpy(v)
        for w, (_, name) in plan.weights.items():
            node = nodes[name]
            if node.input[0] != t or _layer_fn(node) is None:
                continue
            fn, aq = _layer_fn(node), rtn.activations[plan.shared.get(t, t)]
            ref = fn(x, torch.from_numpy(inits[w]))
            for k, qp in (("rtn", rtn), ("ada", ada_fp)):
                out = fn(_fake_quant(x, aq), torch.from_numpy(qp.weights[w].dequantize()))
                err[k] += float((out - ref).pow(2).sum(1).mean())
    assert err["ada"] < 0.9 * err["rtn"], err
    ref = np.concatenate([ort_session(fp32, 1).run(None, {"input": b})[0] for b in arrays])
    out_err, outs = {}, {}
    for k, qp in (("rtn", rtn), ("ada", ada_q), ("ada_fp", ada_fp)):
        f = write_qdq(prep.model, plan, qp, tmp_path / f"{k}.onnx")
        outs[k] = np.concatenate([ort_session(f, 1).run(None, {"input": b})[0] for b in arrays])
        out_err[k] = float(((outs[k] - ref) ** 2).mean())
    assert out_err["ada"] < out_err["rtn"], out_err
    assert (outs["ada_fp"].argmax(1) == ref.argmax(1)).mean() >= 0.8  # (PTQConfig(adaround=True): test_quant_any)


def test_qat_learned_ranges_move_keep_relu_zero_and_export_faithfully(tmp_path, trained_classifier):
    """LSQ+ ranges: trained by gradient (they move), ranges starting at 0 keep 0 (a folded ReLU still
    clamps), and the INT8 file agrees with the fake-quant module."""
    from slimzoo.quant.qat import QATConfig, quantize_aware_train
    from slimzoo.runtime import ort_session

    task, model = trained_classifier
    cfg = QATConfig(epochs=1, lr=1e-4, max_steps=4, learn_ranges=True, range_lr=1e-2)
    from slimzoo.quant.qat import prepare_qat

    before = prepare_qat(model, task.example_inputs(), task.calibration_batches(32), cfg)[0].act_ranges()
    path, qmod = quantize_aware_train(model, task.example_inputs(), task.train_loader(), task.loss_fn,
                                      task.calibration_batches(32), tmp_path / "lsq.onnx", cfg, progress=False)
    after = qmod.act_ranges()
    assert after.keys() == before.keys()
    assert sum(abs(after[t][1] - before[t][1]) > 1e-4 for t in before) > len(before) // 2
    assert all(after[t][0] == 0.0 for t in before if before[t][0] == 0.0)
    sess = ort_session(path, 1)
    agree = total = 0
    with torch.no_grad():
        for images, _ in task.val_loader():
            agree += int((qmod(images).argmax(1).numpy() == sess.run(None, {"input": images.numpy()})[0].argmax(1)).sum())
            total += len(images)
    assert agree / total >= 0.99


@pytest.mark.parametrize("kw", [{"freeze_ranges_at": 1.5}, {"range_lr": 0.0}, {"lr": -1e-5}])
def test_qat_config_rejects_bad_values_however_built(kw):
    from slimzoo.errors import ConfigError
    from slimzoo.quant.qat import QATConfig

    with pytest.raises(ConfigError, match=next(iter(kw)).split("_")[0]):
        QATConfig(**kw)  # as the CLI builds it
    with pytest.raises(ConfigError):
        QATConfig.from_dict(kw)  # as a recipe does


def test_settings_typed_as_a_union_take_every_member_from_a_recipe():
    from slimzoo.errors import ConfigError
    from slimzoo.quant import PTQConfig
    from slimzoo.quant.qat import QATConfig
    from slimzoo.training import TrainConfig

    # bias_correction: bool | str; a recipe's `bias_correction: false` was refused as "must be a str"
    assert [PTQConfig.from_dict({"bias_correction": v}).bias_correction for v in (False, True, "depthwise")] == \
        [False, True, "depthwise"]
    assert QATConfig.from_dict({"max_steps": None}).max_steps is None  # int | None
    assert TrainConfig.from_dict({"num_workers": 2}).num_workers == 2
    with pytest.raises(ConfigError, match="num_workers' must be a int | None"):  # was taken: default None
        TrainConfig.from_dict({"num_workers": "two"})
    with pytest.raises(ConfigError, match="bias_correction' must be a bool | str"):
        PTQConfig.from_dict({"bias_correction": 3})
    with pytest.raises(ConfigError, match="num_calibration' must be a int"):
        PTQConfig.from_dict({"num_calibration": "many"})
