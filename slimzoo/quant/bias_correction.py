"""Empirical bias correction: undo the mean output shift that quantizing a layer causes.

For each quantized Conv/Gemm, on the calibration images, the layer's FP32 output
``W x`` is compared with its INT8 output ``Q(W) Q(x)`` (same FP32 input x); the mean
difference per output channel is added to the bias (as NNCF's fast bias correction
does). The corrected biases are part of ``QuantParams``, so the one QDQ writer emits them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .qdq import QdqPlan, _attr
from .qparams import QuantParams, TensorQParams


def _fake_quant(x: torch.Tensor, q: TensorQParams) -> torch.Tensor:
    return (torch.clamp(torch.round(x / q.scale) + q.zero_point, *q.qrange) - q.zero_point) * q.scale


def _layer_fn(node):
    """A function computing the node's output without bias, from (x, W)."""
    if node.op_type == "Conv":
        pads = _attr(node, "pads", [0, 0, 0, 0])
        kw = {"stride": tuple(_attr(node, "strides", [1, 1])), "dilation": tuple(_attr(node, "dilations", [1, 1])),
              "groups": _attr(node, "group", 1)}
        if pads[0] != pads[2] or pads[1] != pads[3]:
            return None  # asymmetric padding: leave this layer's bias as it is

        def conv(x, w):
            return F.conv2d(x, w, padding=(pads[0], pads[1]), **kw)
        return conv, (0, 2, 3)
    if node.op_type == "Gemm" and _attr(node, "transA", 0) == 0:
        trans_b = _attr(node, "transB", 0)
        return (lambda x, w: x @ (w.T if trans_b else w)), (0,)
    return None


def correct_biases(model, plan: QdqPlan, qp: QuantParams, batches: Sequence[np.ndarray],
                   depthwise_only: bool = False) -> QuantParams:
    """Fill ``qp.biases`` with corrected float biases for every quantized Conv/Gemm that has a bias (with
    ``depthwise_only``, for the depthwise convs only, one input channel per output channel: their few weights per
    channel leave a systematic shift, docs/quantization.md)."""
    from onnx import numpy_helper

    from .calibrate import iterate_tensors

    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    layers = {}
    for name, (b, x, w) in plan.biases.items():
        fn = _layer_fn(nodes[name])
        x_src = plan.shared.get(x, x)
        if fn is None or x_src not in qp.activations:
            continue
        w_fp = torch.from_numpy(numpy_helper.to_array(inits[w]).astype(np.float32))
        if depthwise_only and not (nodes[name].op_type == "Conv" and _attr(nodes[name], "group", 1) > 1
                                   and w_fp.shape[1] == 1):
            continue
        w_q = torch.from_numpy(qp.weights[w].dequantize())
        layers[name] = (x, fn, w_fp, w_q, qp.activations[x_src])
    inputs = sorted({v[0] for v in layers.values()})
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    with torch.no_grad():
        for tensor, value in iterate_tensors(model, inputs, list(batches)):
            x = torch.from_numpy(np.ascontiguousarray(value))
            for name, (inp, (fn, dims), w_fp, w_q, aq) in layers.items():
                if inp != tensor:
                    continue
                diff = fn(x, w_fp) - fn(_fake_quant(x, aq), w_q)
                sums[name] = sums.get(name, 0) + diff.sum(dim=dims).double()
                counts[name] = counts.get(name, 0) + diff.numel() // diff.shape[1]
    for name in sums:
        b = plan.biases[name][0]
        qp.biases[name] = (numpy_helper.to_array(inits[b]).astype(np.float64)
                           + (sums[name] / counts[name]).numpy()).astype(np.float32)
    return qp
