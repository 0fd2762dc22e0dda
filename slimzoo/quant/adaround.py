"""Learned weight rounding (AdaRound, Nagel et al. 2020): round each weight up or down so that the layer's
output matches FP32, instead of to the nearest integer.

For every quantized Conv/Gemm, on calibration images: the layer's FP32 output ``W x`` (FP32 input ``x``, from
the FP32 graph) is the target; the quantized layer sees ``x~``, its input in the quantized network (the QDQ graph
with the roundings learned so far, ``quantized_inputs=True``; by default ``Q(x)``, the FP32 input through its
own quantizer only) and weights ``s * clip(floor(W / s) + h(V))``, where ``h`` is a rectified sigmoid of a learned
``V`` per weight, started at the fractional part (round-to-nearest's neighbourhood). Adam minimises the output
error plus a regulariser that pushes every ``h`` to 0 or 1 (its exponent annealed from 20 to 2 after a warm-up). The
chosen integers replace ``QuantParams.weights[w].qweight``; scales and the writer are unchanged.

The squared error is quadratic in the weights, so each layer's objective over all images and positions is
computed once from second moments of its inputs (:func:`_optimise`): a step costs a few small matrix products.
Layers are taken in graph order, a few at a time (inputs gathered in chunks so that memory stays bounded).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .qdq import QdqPlan, _attr
from .qparams import INT8_SYM, QuantParams, TensorQParams

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch


@dataclass
class AdaRoundConfig:
    iters: int = 300  # Adam steps per layer
    lr: float = 1e-2
    reg: float = 0.01  # weight of the rounding regulariser
    warmup: float = 0.2  # fraction of steps without the regulariser
    beta: tuple[float, float] = (20.0, 2.0)  # regulariser exponent, annealed from the first to the second
    max_bytes: int = 768 * 2**20  # stored layer inputs per chunk
    # each layer learns from its input in the quantized network (the earlier layers' learned roundings and every
    # activation quantizer upstream: the paper's "asymmetric reconstruction") rather than from its FP32 input
    # quantized once; the quantized graph is run again every ``layers_per_pass`` layers. Off: on EfficientNet-Lite0
    # with 64 calibration crops it fitted them and lost 1 dB of output SQNR on other photos (docs/quantization.md)
    quantized_inputs: bool = False
    layers_per_pass: int = 4


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def _fake_quant(x: torch.Tensor, q: TensorQParams) -> torch.Tensor:
    return (torch.clamp(torch.round(x / q.scale) + q.zero_point, *q.qrange) - q.zero_point) * q.scale


def _layer_fn(node):
    """``f(x, w)`` computing the node's output without bias, or None where not supported."""
    if node.op_type == "Conv":
        pads = list(_attr(node, "pads", [0, 0, 0, 0]))
        kw = {"stride": tuple(_attr(node, "strides", [1, 1])), "dilation": tuple(_attr(node, "dilations", [1, 1])),
              "groups": _attr(node, "group", 1)}

        def conv(x, w):
            return F.conv2d(F.pad(x, (pads[1], pads[3], pads[0], pads[2])), w, **kw)
        return conv
    if node.op_type == "Gemm" and _attr(node, "transA", 0) == 0:
        trans_b = _attr(node, "transB", 0)
        return lambda x, w: x @ (w.T if trans_b else w)
    return None


def _weight_groups(node, w: torch.Tensor) -> torch.Tensor:
    """The weight as ``(groups, outputs per group, inputs per output)``: each output is a dot product of one row
    with an input vector of :func:`_input_vectors`."""
    if node.op_type == "Conv":
        g = _attr(node, "group", 1)
        return w.reshape(g, w.shape[0] // g, -1)
    wt = w if _attr(node, "transB", 0) else w.T  # (outputs, inputs)
    return wt.reshape(1, *wt.shape)


def _input_vectors(node, x: torch.Tensor, groups: int, kernel: tuple[int, ...]) -> torch.Tensor:
    """Every input vector a layer's outputs are dot products with, ``(groups, inputs per output, vectors)``: a
    conv's receptive fields over all images and positions (padding included), a Gemm's rows."""
    if node.op_type != "Conv":
        return x.reshape(1, x.shape[0], -1).transpose(1, 2)
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    strides = tuple(_attr(node, "strides", [1, 1]))
    n = x.shape[0]
    if all(k == 1 for k in kernel) and not any(pads) and all(t == 1 for t in strides):  # 1x1: no unfolding
        u = x.reshape(n, x.shape[1], -1)
    else:  # (n, C*kh*kw, positions), channel-major
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        u = F.unfold(x, kernel, dilation=tuple(_attr(node, "dilations", [1, 1])), stride=strides)
    d = u.shape[1]
    return u.reshape(n, groups, d // groups, -1).permute(1, 2, 0, 3).reshape(groups, d // groups, -1)


def _second_moments(node, x_fp: torch.Tensor, x_q: torch.Tensor, groups: int, kernel: tuple[int, ...],
                    images_per_pass: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``E[x~ x~^T]`` and ``E[x~ x^T]`` over every input vector of the calibration images (``x~``: the layer's
    input in the quantized network, ``x``: in FP32), per group; each pass's sums are added in float64."""
    a = b = 0
    count = 0
    for i in range(0, x_fp.shape[0], images_per_pass):
        u = _input_vectors(node, x_fp[i:i + images_per_pass], groups, kernel)
        uq = _input_vectors(node, x_q[i:i + images_per_pass], groups, kernel)
        a = a + (uq @ uq.transpose(1, 2)).double()
        b = b + (uq @ u.transpose(1, 2)).double()
        count += u.shape[2]
    return (a / count).float(), (b / count).float()


@torch.enable_grad()  # the caller may be under torch.no_grad(); the rounding is learned by gradient descent
def _optimise(node, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, axis: int,
              cfg: AdaRoundConfig) -> np.ndarray:
    """The learned rounding of one layer. Its objective, the mean over all input vectors of the squared output
    error summed over outputs, is quadratic in the weights: ``E|W~ x~ - W x|^2 = tr(W~ A W~^T) - 2 tr(W~ B W^T)
    + const`` with ``A = E[x~ x~^T]``, ``B = E[x~ x^T]`` (:func:`_second_moments`). Both are computed once over
    every image and position, so each step costs a few small matrix products and sees the whole calibration set
    (no sampled batches)."""
    shape = [1] * w.ndim
    shape[axis] = -1
    s = scale.reshape(shape)
    w_floor = torch.floor(w / s)
    rest = (w / s - w_floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    lo, hi = INT8_SYM
    with torch.no_grad():
        bw = _weight_groups(node, w) @ b.transpose(1, 2)  # (W B^T) per group: the cross term is sum(W~ * bw)
    warm = int(cfg.warmup * cfg.iters)
    for it in range(cfg.iters):
        wq = _weight_groups(node, s * torch.clamp(w_floor + _h(v), lo, hi))
        loss = ((wq @ a) * wq).sum() - 2 * (wq * bw).sum()
        if it >= warm:
            t = (it - warm) / max(1, cfg.iters - warm)
            beta = cfg.beta[1] + 0.5 * (cfg.beta[0] - cfg.beta[1]) * (1 + np.cos(np.pi * t))
            loss = loss + cfg.reg * (1 - (2 * _h(v) - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = torch.clamp(w_floor + (v >= 0).float(), lo, hi)
    return q.numpy().astype(np.int8)


def _quantized_graph(model, plan: QdqPlan, qp: QuantParams):
    """The QDQ graph of ``qp`` as it stands (the learned roundings so far), in memory."""
    import tempfile
    import warnings
    from pathlib import Path

    import onnx

    from .qdq import write_qdq

    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # write_qdq's notes on raised weight scales are the final file's to give
        return onnx.load(str(write_qdq(model, plan, qp, Path(d) / "q.onnx")))


def adaround(model, plan: QdqPlan, qp: QuantParams, batches: Sequence[np.ndarray], cfg: AdaRoundConfig | None = None,
             *, progress: bool = False) -> QuantParams:
    """Replace the round-to-nearest weights of ``qp`` by learned roundings, layer by layer (see the module doc)."""
    from onnx import numpy_helper
    from tqdm import tqdm

    from .calibrate import iterate_tensors

    cfg = cfg or AdaRoundConfig()
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    layers = []  # (weight initializer, node, input tensor, its activation qparams)
    for w, (_, node_name) in plan.weights.items():
        node = nodes[node_name]
        x = node.input[0]
        src = plan.shared.get(x, x)
        if _layer_fn(node) is not None and src in qp.activations and w in qp.weights:
            layers.append((w, node, x, qp.activations[src]))
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    layers.sort(key=lambda layer: order[layer[1].name])  # graph order: a layer's inputs see earlier layers learned
    images = sum(len(b) for b in batches)
    sizes = {}  # bytes of one layer's stored input over all images, from the first batch
    for t, v in iterate_tensors(model, sorted({x for _, _, x, _ in layers}), [batches[0]]):
        sizes[t] = v.nbytes // len(batches[0]) * images * (2 if cfg.quantized_inputs else 1)
    bar = tqdm(total=len(layers), desc="adaround", disable=None if progress else True, leave=False)
    start = 0
    while start < len(layers):
        chunk, used = [], 0
        for layer in layers[start:]:
            if chunk and (used + sizes[layer[2]] > cfg.max_bytes
                          or (cfg.quantized_inputs and len(chunk) >= cfg.layers_per_pass)):
                break
            chunk.append(layer)
            used += sizes[layer[2]]
        start += len(chunk)
        inputs = _gather(model, sorted({x for _, _, x, _ in chunk}), batches)
        if cfg.quantized_inputs:  # each layer's input as the quantized network computes it, layers before learned
            qmodel = _quantized_graph(model, plan, qp)
            q_in = {n.name: n.input[0] for n in qmodel.graph.node if n.input}
            q_inputs = _gather(qmodel, sorted({q_in[node.name] for _, node, _, _ in chunk}), batches)
        for w_name, node, x, aq in chunk:
            wq = qp.weights[w_name]
            w = torch.from_numpy(numpy_helper.to_array(inits[w_name]).astype(np.float32))
            x_q = q_inputs[q_in[node.name]] if cfg.quantized_inputs else _fake_quant(inputs[x], aq)
            groups = _weight_groups(node, w).shape[0]
            a, b = _second_moments(node, inputs[x], x_q, groups, tuple(w.shape[2:]))
            wq.qweight = _optimise(node, a, b, w, torch.from_numpy(wq.scale), wq.axis, cfg)
            bar.update()
        inputs = q_inputs = None  # free this chunk's stored inputs before gathering the next
    bar.close()
    return qp


def _gather(model, tensors: list[str], batches) -> dict[str, torch.Tensor]:
    """The values of ``tensors`` over all ``batches``, concatenated."""
    from .calibrate import iterate_tensors

    stored: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for t, v in iterate_tensors(model, tensors, list(batches)):
        stored[t].append(np.ascontiguousarray(v))
    return {t: torch.from_numpy(np.concatenate(vs)) for t, vs in stored.items()}
