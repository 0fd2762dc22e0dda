"""Run a (BN-folded) ONNX graph as a trainable PyTorch module, with fake quantization on chosen tensors.

Quantization-aware training trains *this* module: its float tensors carry the ONNX names,
so the fake quantizers sit exactly where the QDQ plan puts QuantizeLinear/DequantizeLinear,
and the trained weights and ranges go back through the one QDQ writer unchanged.
Covers the operators our exported vision models use.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .qdq import _attr


def _pads(node, spatial: int = 2) -> tuple[tuple[int, ...], bool]:
    pads = list(_attr(node, "pads", [0] * 2 * spatial))
    begin, end = pads[:spatial], pads[spatial:]
    return tuple(begin), begin == end


def _conv(node, x, w, b=None):
    begin, sym = _pads(node)
    if not sym:
        pads = list(_attr(node, "pads"))
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        begin = (0, 0)
    return F.conv2d(x, w, b, stride=tuple(_attr(node, "strides", [1, 1])), padding=begin,
                    dilation=tuple(_attr(node, "dilations", [1, 1])), groups=_attr(node, "group", 1))


def _gemm(node, a, b, c=None):
    if _attr(node, "transA", 0):
        a = a.transpose(-1, -2)
    if _attr(node, "transB", 0):
        b = b.transpose(-1, -2)
    y = _attr(node, "alpha", 1.0) * (a @ b)
    return y if c is None else y + _attr(node, "beta", 1.0) * c


def _maxpool(node, x):
    begin, sym = _pads(node)
    if not sym:
        raise ConfigError(f"MaxPool {node.name}: asymmetric padding is not supported for QAT")
    return F.max_pool2d(x, tuple(_attr(node, "kernel_shape")), tuple(_attr(node, "strides", [1, 1])), begin,
                        ceil_mode=bool(_attr(node, "ceil_mode", 0)))


def _avgpool(node, x):
    begin, _ = _pads(node)
    return F.avg_pool2d(x, tuple(_attr(node, "kernel_shape")), tuple(_attr(node, "strides", [1, 1])), begin,
                        ceil_mode=bool(_attr(node, "ceil_mode", 0)),
                        count_include_pad=bool(_attr(node, "count_include_pad", 0)))


def _clip(node, x, lo=None, hi=None):
    lo = _attr(node, "min") if lo is None else lo
    hi = _attr(node, "max") if hi is None else hi
    return torch.clamp(x, min=None if lo is None else float(lo), max=None if hi is None else float(hi))


def _resize(node, x, roi=None, scales=None, sizes=None):
    mode = _attr(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    kw = {"size": [int(s) for s in sizes[2:]]} if sizes is not None and sizes.numel() else \
        {"scale_factor": [float(s) for s in scales[2:]]}
    if mode == "nearest":
        return F.interpolate(x, mode="nearest", **kw)
    ctm = _attr(node, "coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    return F.interpolate(x, mode="bilinear", align_corners=ctm == "align_corners", **kw)


OPS = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda n, a, b: a @ b,
    "Relu": lambda n, x: F.relu(x),
    "Clip": _clip,
    "Add": lambda n, a, b: a + b,
    "Mul": lambda n, a, b: a * b,
    "Sigmoid": lambda n, x: torch.sigmoid(x),
    "HardSwish": lambda n, x: F.hardswish(x),
    "HardSigmoid": lambda n, x: torch.clamp(_attr(n, "alpha", 0.2) * x + _attr(n, "beta", 0.5), 0, 1),
    "Div": lambda n, a, b: a / b,
    "GlobalAveragePool": lambda n, x: x.mean(dim=(2, 3), keepdim=True),
    "AveragePool": _avgpool,
    "MaxPool": _maxpool,
    "Flatten": lambda n, x: x.flatten(_attr(n, "axis", 1)),
    "Reshape": lambda n, x, s: x.reshape([x.shape[i] if int(d) == 0 else int(d) for i, d in enumerate(s)]),
    "Transpose": lambda n, x: x.permute(*_attr(n, "perm")),
    "Identity": lambda n, x: x,
    "Concat": lambda n, *xs: torch.cat(xs, dim=_attr(n, "axis")),
    "Resize": _resize,
}


class FakeQuantAct(nn.Module):
    """uint8 per-tensor fake quantization of an activation (straight-through gradient for the input).

    Ranges either follow a moving average of the observed min/max (``learn=False``; frozen by
    ``observe = False``), or are learned by gradient descent (``learn=True``: LSQ+, Bhalgat et al. 2020, with
    the range ends as parameters; a range that starts at 0, such as a folded ReLU's, keeps 0 as its low end so
    the uint8 grid still clamps at zero)."""

    def __init__(self, lo: float, hi: float, momentum: float = 0.9, learn: bool = False):
        super().__init__()
        lo, hi = torch.tensor(float(min(lo, 0.0))), torch.tensor(float(max(hi, 0.0)))
        self.learn = learn
        if learn:
            self.hi = nn.Parameter(hi)
            if float(lo) < 0:
                self.lo = nn.Parameter(lo)
            else:
                self.register_buffer("lo", lo)
        else:
            self.register_buffer("lo", lo)
            self.register_buffer("hi", hi)
        self.momentum = momentum
        self.observe = not learn

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = torch.clamp(self.lo.detach(), max=0.0), torch.clamp(self.hi.detach(), min=0.0)
        scale = torch.clamp((hi - lo) / 255.0, min=1e-8)
        zp = torch.clamp(torch.round(-lo / scale), 0, 255).to(torch.int32)
        return scale.float(), zp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.learn:
            lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=1e-6)
            scale = ((hi - lo) / 255.0).reshape(1)
            zp = (-lo / scale).reshape(1)
            # LSQ scales the range gradient by 1 / sqrt(elements * levels) for SGD; AdamW normalises gradients
            # itself, and so scaled they fall under its epsilon and the ranges never move: no scaling
            return torch._fake_quantize_learnable_per_tensor_affine(x.float(), scale, zp, 0, 255, 1.0)
        if self.training and self.observe:
            with torch.no_grad():
                m = self.momentum
                self.lo.mul_(m).add_((1 - m) * x.min().float())
                self.hi.mul_(m).add_((1 - m) * x.max().float())
        scale, zp = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zp, 0, 255)


def fake_quant_weight(w: torch.Tensor, axis: int) -> torch.Tensor:
    """Symmetric int8 per-channel fake quantization with abs-max scales (straight-through gradient)."""
    dims = [d for d in range(w.ndim) if d != axis]
    scale = torch.clamp(w.detach().abs().amax(dim=dims) / 127.0, min=1e-12)
    zp = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, axis, -127, 127)


class OnnxModule(nn.Module):
    """An ONNX graph as a module: initializers become parameters, chosen tensors get fake quantizers."""

    def __init__(self, model, act_ranges: dict[str, tuple[float, float]] | None = None,
                 weight_axes: dict[str, int] | None = None, momentum: float = 0.9, learn_ranges: bool = False):
        super().__init__()
        from onnx import numpy_helper

        g = model.graph
        self.nodes = [n for n in g.node]
        unknown = sorted({n.op_type for n in self.nodes if n.op_type not in OPS and n.op_type != "Constant"})
        if unknown:
            raise ConfigError(f"quantization-aware training does not support ONNX op(s) {unknown} yet")
        self.input_name = g.input[0].name
        self.output_names = [o.name for o in g.output]
        self.param_names: dict[str, str] = {}  # ONNX initializer name -> parameter attribute name
        self.consts: dict[str, torch.Tensor] = {}
        self.params = nn.ParameterDict()
        for i, init in enumerate(g.initializer):
            arr = numpy_helper.to_array(init)
            if arr.dtype in (np.float32, np.float64) and arr.ndim >= 1:
                key = f"p{i}"
                self.params[key] = nn.Parameter(torch.from_numpy(arr.astype(np.float32).copy()))
                self.param_names[init.name] = key
            else:
                self.consts[init.name] = torch.from_numpy(np.array(arr))
        for n in self.nodes:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(n.attribute[0].t)))
        self.act_keys = {t: f"a{i}" for i, t in enumerate(act_ranges or {})}
        self.act_fq = nn.ModuleDict({self.act_keys[t]: FakeQuantAct(lo, hi, momentum, learn_ranges)
                                     for t, (lo, hi) in (act_ranges or {}).items()})
        self.weight_axes = dict(weight_axes or {})

    def set_observing(self, on: bool) -> None:
        """Freeze (False) or resume (True) the moving-average activation ranges."""
        for m in self.act_fq.values():
            m.observe = on and not m.learn

    def tensor(self, name: str, env: dict) -> torch.Tensor | None:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self.param_names:
            w = self.params[self.param_names[name]]
            return fake_quant_weight(w, self.weight_axes[name]) if name in self.weight_axes else w
        return self.consts[name]

    def forward(self, x: torch.Tensor):
        env = {self.input_name: x}
        if self.input_name in self.act_keys:
            env[self.input_name] = self.act_fq[self.act_keys[self.input_name]](x)
        for n in self.nodes:
            if n.op_type == "Constant":
                continue
            y = OPS[n.op_type](n, *[self.tensor(i, env) for i in n.input])
            out = n.output[0]
            if out in self.act_keys:
                y = self.act_fq[self.act_keys[out]](y)
            env[out] = y
        outs = [env[o] for o in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def float_initializers(self) -> dict[str, np.ndarray]:
        """The trained float tensors by ONNX initializer name."""
        return {name: self.params[key].detach().cpu().numpy() for name, key in self.param_names.items()}

    def act_ranges(self) -> dict[str, tuple[float, float]]:
        return {t: (float(self.act_fq[k].lo), float(self.act_fq[k].hi)) for t, k in self.act_keys.items()}
