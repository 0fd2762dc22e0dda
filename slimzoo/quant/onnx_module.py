"""Run a (BN-folded) ONNX graph as a trainable PyTorch module, with fake quantization on chosen tensors.

Quantization-aware training trains *this* module: its float tensors carry the ONNX names,
so the fake quantizers sit exactly where the QDQ plan puts QuantizeLinear/DequantizeLinear,
and the trained weights and ranges go back through the one QDQ writer unchanged.
Covers the operators exported vision networks use: convs and pooling, elementwise and activation ops, LayerNorm,
attention (MatMul, Softmax), and the shape arithmetic the exporter writes (Shape, Gather, Slice, Concat, ...);
tests/test_qat_any.py checks it against ONNX Runtime on ShuffleNetV2, ConvNeXt and a ViT.
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


def _ints(t) -> list[int]:
    return [int(v) for v in (t.reshape(-1).tolist() if torch.is_tensor(t) else t)]


def _axes(node, given) -> list[int] | None:
    """Axes from the input (opset >= 13 for Squeeze/Unsqueeze, 18 for reductions) or the attribute."""
    if given is not None:
        return _ints(given)
    a = _attr(node, "axes")
    return None if a is None else [int(v) for v in a]


def _gather(node, x, idx):
    axis = _attr(node, "axis", 0) % x.ndim
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape((*x.shape[:axis], *idx.shape, *x.shape[axis + 1:]))


def _unsqueeze(node, x, axes=None):
    axes = _axes(node, axes)
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(node, x, axes=None):
    axes = _axes(node, axes)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.ndim for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _slice(node, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):  # ONNX's clamping rules, negative steps included
        a %= x.ndim
        n = x.shape[a]
        s, e = s + n if s < 0 else s, e + n if e < 0 else e
        lo, hi = (0, n) if st > 0 else (-1, n - 1)
        s, e = max(lo, min(hi, s)), max(lo, min(hi, e))
        x = x.index_select(a, torch.arange(s, e, st, device=x.device))
    return x


def _split(node, x, split=None):
    axis = _attr(node, "axis", 0)
    sizes = _ints(split) if split is not None else _attr(node, "split")
    if sizes is None:
        k = len(node.output)
        sizes = [-(-x.shape[axis] // k)] * k
    return tuple(torch.split(x, [int(v) for v in sizes], dim=axis))


def _reduce_mean(node, x, axes=None):
    axes = _axes(node, axes)
    return x.mean(dim=tuple(axes) if axes else None, keepdim=bool(_attr(node, "keepdims", 1))) if axes or \
        not _attr(node, "noop_with_empty_axes", 0) else x


def _layer_norm(node, x, scale, bias=None):
    axis = _attr(node, "axis", -1) % x.ndim
    return F.layer_norm(x, x.shape[axis:], scale, bias, eps=_attr(node, "epsilon", 1e-5))


def _div(node, a, b):
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates
    return a / b


_DTYPES = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64}


def _cast(node, x):
    to = _attr(node, "to")
    if to not in _DTYPES:
        raise ConfigError(f"Cast {node.name}: to ONNX type {to} is not supported for QAT")
    return x.to(_DTYPES[to])


def _shape(node, x):
    dims = list(x.shape)[_attr(node, "start", 0):_attr(node, "end", None)]
    return torch.tensor(dims, dtype=torch.int64)


def _expand(node, x, shape):
    return x * torch.ones(_ints(shape), dtype=x.dtype)  # ONNX Expand broadcasts both ways, as multiplication does


def _pad(node, x, pads=None, value=None, axes=None):
    pads = _ints(pads) if pads is not None else [int(v) for v in _attr(node, "pads")]
    mode = _attr(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    axes = [a % x.ndim for a in _ints(axes)] if axes is not None else list(range(x.ndim))
    begin, end = [0] * x.ndim, [0] * x.ndim
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[len(axes) + i]
    torch_pads = [p for a in reversed(range(x.ndim)) for p in (begin[a], end[a])]  # last axis first
    if mode == "constant":
        v = float(value.reshape(-1)[0]) if value is not None and value.numel() else 0.0
        return F.pad(x, torch_pads, mode="constant", value=v)
    if mode not in ("reflect", "edge"):
        raise ConfigError(f"Pad {node.name}: mode {mode!r} is not supported for QAT")
    return F.pad(x, torch_pads, mode="reflect" if mode == "reflect" else "replicate")


def _constant_of_shape(node, shape):
    from onnx import numpy_helper

    value = _attr(node, "value")
    v = torch.from_numpy(np.array(numpy_helper.to_array(value))).reshape(-1) if value is not None else \
        torch.zeros(1)
    return torch.full(_ints(shape), v[0].item(), dtype=v.dtype)


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
    "GlobalAveragePool": lambda n, x: x.mean(dim=(2, 3), keepdim=True),
    "AveragePool": _avgpool,
    "MaxPool": _maxpool,
    "Flatten": lambda n, x: x.flatten(_attr(n, "axis", 1)),
    "Reshape": lambda n, x, s: x.reshape([x.shape[i] if int(d) == 0 else int(d) for i, d in enumerate(s)]),
    "Transpose": lambda n, x: x.permute(*_attr(n, "perm")),
    "Identity": lambda n, x: x,
    "Concat": lambda n, *xs: torch.cat(xs, dim=_attr(n, "axis")),
    "Resize": _resize,
    "Sub": lambda n, a, b: a - b,
    "Div": _div,
    "Pow": lambda n, a, b: torch.pow(a, b),
    "Sqrt": lambda n, x: torch.sqrt(x),
    "Erf": lambda n, x: torch.erf(x),
    "Tanh": lambda n, x: torch.tanh(x),
    "Exp": lambda n, x: torch.exp(x),
    "Neg": lambda n, x: -x,
    "Gelu": lambda n, x: F.gelu(x, approximate="tanh" if _attr(n, "approximate", b"none") in (b"tanh", "tanh")
                                else "none"),
    "LeakyRelu": lambda n, x: F.leaky_relu(x, _attr(n, "alpha", 0.01)),
    "Softmax": lambda n, x: torch.softmax(x, dim=_attr(n, "axis", -1)),
    "LayerNormalization": _layer_norm,
    "ReduceMean": _reduce_mean,
    "Shape": _shape,
    "Gather": _gather,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Slice": _slice,
    "Split": _split,
    "Cast": _cast,
    "Expand": _expand,
    "ConstantOfShape": _constant_of_shape,
    "Pad": _pad,
    "InstanceNormalization": lambda n, x, sc, b: F.instance_norm(x, weight=sc, bias=b, eps=_attr(n, "epsilon", 1e-5)),
    "BatchNormalization": lambda n, x, sc, b, mean, var: F.batch_norm(x, mean.detach(), var.detach(), sc, b,
                                                                      training=False, eps=_attr(n, "epsilon", 1e-5)),
    "Equal": lambda n, a, b: a == b,
    "Where": lambda n, c, a, b: torch.where(c, a, b),
    "Mod": lambda n, a, b: torch.fmod(a, b) if _attr(n, "fmod", 0) else torch.remainder(a, b),
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
    """An ONNX graph as a module: initializers become parameters, chosen tensors get fake quantizers (``shared``:
    tensor -> the tensor whose quantizer it uses, for tensors the writer puts on one range)."""

    def __init__(self, model, act_ranges: dict[str, tuple[float, float]] | None = None,
                 weight_axes: dict[str, int] | None = None, momentum: float = 0.9, learn_ranges: bool = False,
                 shared: dict[str, str] | None = None):
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
        own = {t: f"a{i}" for i, t in enumerate(act_ranges or {})}
        shared = {t: r for t, r in (shared or {}).items() if t in own and r in own}
        self.act_keys = {t: own[shared.get(t, t)] for t in own}
        self.act_fq = nn.ModuleDict({own[t]: FakeQuantAct(lo, hi, momentum, learn_ranges)
                                     for t, (lo, hi) in (act_ranges or {}).items() if shared.get(t, t) == t})
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
            for out, v in zip(n.output, y if isinstance(y, tuple) else (y,)):
                if out in self.act_keys:
                    v = self.act_fq[self.act_keys[out]](v)
                env[out] = v
        outs = [env[o] for o in self.output_names]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def float_initializers(self) -> dict[str, np.ndarray]:
        """The trained float tensors by ONNX initializer name."""
        return {name: self.params[key].detach().cpu().numpy() for name, key in self.param_names.items()}

    def act_ranges(self) -> dict[str, tuple[float, float]]:
        return {t: (float(self.act_fq[k].lo), float(self.act_fq[k].hi)) for t, k in self.act_keys.items()}
