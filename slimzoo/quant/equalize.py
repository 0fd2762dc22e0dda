"""Cross-layer equalization (Nagel et al., 2019, "Data-Free Quantization").

For two convolutions joined by a ReLU (or nothing), ``conv2(relu(conv1(x)))`` is unchanged
when output channel i of conv1 (weights and bias) is divided by s_i > 0 and input channel i
of conv2 is multiplied by it, because ReLU commutes with positive scaling. Choosing
s_i = sqrt(r1_i / r2_i), with r the channel's weight range in each layer, makes both ranges
equal, which helps per-tensor and depthwise layers whose channel ranges differ a lot.
ReLU6 (Clip) does not commute with scaling, so pairs joined by it are left alone.
Operates on the BN-folded FP32 ONNX graph, before calibration.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .qdq import _attr, consumer_map


def equalization_pairs(model) -> list[tuple]:
    """(conv1, conv2) node pairs joined directly or by a ReLU, where conv1's output feeds only that path."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    consumers = consumer_map(g)
    outputs = {o.name for o in g.output}
    pairs = []
    for a in g.node:
        if a.op_type != "Conv" or len(a.input) < 3 or a.input[1] not in inits or a.input[2] not in inits:
            continue
        t = a.output[0]
        nxt = consumers[t]
        if len(nxt) == 1 and nxt[0].op_type == "Relu" and t not in outputs:
            t = nxt[0].output[0]
            nxt = consumers[t]
        if len(nxt) != 1 or t in outputs or nxt[0].op_type != "Conv" or nxt[0].input[1] not in inits:
            continue
        pairs.append((a, nxt[0]))
    return pairs


def equalize_cross_layer(model, iterations: int = 3):
    """A copy of ``model`` with every equalizable conv pair rescaled; the function it computes is unchanged."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    arrays = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in m.graph.initializer}
    shared = defaultdict(int)
    for n in m.graph.node:
        for i in n.input:
            shared[i] += 1
    pairs = [(a, b) for a, b in equalization_pairs(m)
             if shared[a.input[1]] == 1 and shared[a.input[2]] == 1 and shared[b.input[1]] == 1]
    for _ in range(iterations):
        for a, b in pairs:
            w1, b1, w2 = arrays[a.input[1]], arrays[a.input[2]], arrays[b.input[1]]
            groups = _attr(b, "group", 1)
            c = w1.shape[0]
            if groups == 1 and w2.shape[1] == c:
                r2 = np.abs(w2).max(axis=(0, 2, 3))
            elif groups == c and w2.shape[0] == c and w2.shape[1] == 1:  # depthwise
                r2 = np.abs(w2).max(axis=(1, 2, 3))
            else:
                continue
            r1 = np.abs(w1).reshape(c, -1).max(axis=1)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.maximum(r2, 1e-12)), 1.0).astype(np.float32)
            arrays[a.input[1]] = w1 / s[:, None, None, None]
            arrays[a.input[2]] = b1 / s
            arrays[b.input[1]] = w2 * (s[None, :, None, None] if groups == 1 else s[:, None, None, None])
    for init in m.graph.initializer:
        if init.name in arrays:
            init.CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    return m
