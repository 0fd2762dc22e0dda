"""Learned weight rounding (AdaRound, Nagel et al. 2020): round each weight up or down so that the layer's
output matches FP32, instead of to the nearest integer.

For every quantized Conv/Gemm, on calibration images: the layer's FP32 input ``x`` (from the FP32 graph) and
FP32 output ``W x`` are the target; the quantized layer sees ``Q(x)`` (the activation's uint8 qparams) and
weights ``s * clip(floor(W / s) + h(V))``, where ``h`` is a rectified sigmoid of a learned ``V`` per weight,
started at the fractional part (round-to-nearest's neighbourhood). Adam minimises the output error plus a
regulariser that pushes every ``h`` to 0 or 1 (its exponent annealed from 20 to 2 after a warm-up). The
chosen integers replace ``QuantParams.weights[w].qweight``; scales and the writer are unchanged.

Layers are optimised independently (FP32 inputs), so their order does not matter; inputs are gathered in
chunks of layers so that memory stays bounded.
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
    batch_size: int = 32  # images per step
    lr: float = 1e-2
    reg: float = 0.01  # weight of the rounding regulariser
    warmup: float = 0.2  # fraction of steps without the regulariser
    beta: tuple[float, float] = (20.0, 2.0)  # regulariser exponent, annealed from the first to the second
    max_bytes: int = 768 * 2**20  # stored layer inputs per chunk


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


@torch.enable_grad()  # the caller may be under torch.no_grad(); the rounding is learned by gradient descent
def _optimise(fn, x_fp: torch.Tensor, aq: TensorQParams, w: torch.Tensor, scale: torch.Tensor, axis: int,
              cfg: AdaRoundConfig, gen: torch.Generator) -> np.ndarray:
    shape = [1] * w.ndim
    shape[axis] = -1
    s = scale.reshape(shape)
    w_floor = torch.floor(w / s)
    rest = (w / s - w_floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    lo, hi = INT8_SYM
    with torch.no_grad():
        x_q_all = _fake_quant(x_fp, aq)
    n = x_fp.shape[0]
    warm = int(cfg.warmup * cfg.iters)
    for it in range(cfg.iters):
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
        with torch.no_grad():
            target = fn(x_fp[idx], w)
        wq = s * torch.clamp(w_floor + _h(v), lo, hi)
        out = fn(x_q_all[idx], wq)
        loss = (out - target).pow(2).sum(1).mean()
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
    images = sum(len(b) for b in batches)
    sizes = {}  # bytes of one layer's stored input over all images, from the first batch
    for t, v in iterate_tensors(model, sorted({x for _, _, x, _ in layers}), [batches[0]]):
        sizes[t] = v.nbytes // len(batches[0]) * images
    gen = torch.Generator().manual_seed(0)
    bar = tqdm(total=len(layers), desc="adaround", disable=None if progress else True, leave=False)
    start = 0
    while start < len(layers):
        chunk, used = [], 0
        for layer in layers[start:]:
            if chunk and used + sizes[layer[2]] > cfg.max_bytes:
                break
            chunk.append(layer)
            used += sizes[layer[2]]
        start += len(chunk)
        wanted = sorted({x for _, _, x, _ in chunk})
        stored: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
        for t, v in iterate_tensors(model, wanted, list(batches)):
            stored[t].append(np.ascontiguousarray(v))
        inputs = {t: torch.from_numpy(np.concatenate(vs)) for t, vs in stored.items()}
        for w_name, node, x, aq in chunk:
            wq = qp.weights[w_name]
            w = torch.from_numpy(numpy_helper.to_array(inits[w_name]).astype(np.float32))
            wq.qweight = _optimise(_layer_fn(node), inputs[x], aq, w, torch.from_numpy(wq.scale), wq.axis, cfg, gen)
            bar.update()
        del inputs, stored
    bar.close()
    return qp
