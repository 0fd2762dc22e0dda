import collections

import numpy as np
import pytest
import torch

import slimzoo
from slimzoo.quant.qparams import activation_qparams, quantize_bias, weight_qparams


def test_activation_qparams_cover_range_and_zero():
    qp = activation_qparams(-1.0, 3.0)
    assert qp.scale == pytest.approx(4.0 / 255, rel=1e-6)
    assert 0 <= qp.zero_point <= 255
    assert qp.scale * (0 - qp.zero_point) == pytest.approx(-1.0, abs=qp.scale)
    relu = activation_qparams(0.0, 6.0)  # post-ReLU tensors: zero point 0, so uint8 clamps at zero
    assert relu.zero_point == 0
    assert activation_qparams(0.0, 0.0).scale > 0  # a dead tensor still gets a valid scale


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
    int8 = quantize(m, x, batches, tmp_path / "int8.onnx")
    sess = ort_session(int8, 1, optimized_model_path=str(tmp_path / "opt.onnx"))
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    # every convolution runs as an integer kernel, none falls back to float
    assert ops["QLinearConv"] > 0 and ops["Conv"] == 0 and ops["FusedConv"] == 0, ops
    xt = torch.randn(4, 3, 48, 48)
    ref = m(xt).detach().numpy()
    out = sess.run(None, {"input": xt.numpy()})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.98
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size
