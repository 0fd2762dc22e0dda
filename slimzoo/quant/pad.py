"""Depthwise convs widened to the int8 kernel's channel block (``PTQConfig.pad_channels``).

ONNX Runtime's integer depthwise kernel works on blocks of 16 channels and runs the remainder one channel at a time:
on this machine a chain of 3x3 depthwise convs at 28x28 took 0.45 ms in int8 with 88 channels (MobileNetV3-Small's
third block) against 0.26 ms with 96, and 72 or 120 channels were as slow against 80 or 128 (docs/quantization.md).
Such a conv, the convs that feed it and read it, and the channel-wise ops between them (activations, a
squeeze-excite's pooling and gate) are widened with zero channels to the next multiple of the block: the producing
convs get zero filters, the depthwise conv zero filters and zero biases, the reading convs zero input weights. The added channels hold zeros (or a constant such
as a sigmoid's 0.5) that nothing reads with a nonzero weight, so the widened file computes exactly what the narrow
one does, on the same integer weights and scales; only the kernels' speed changes.

The widening is applied to the quantized parameters as the file is written (``write_qdq(..., pad_to=16)``), so
calibration, bias correction and learned rounding see the network as it is. A set of tensors is widened only where
every op touching it is one of the kinds above; anything else (a residual Add with another tensor, a Concat,
Reshape, a graph output) leaves it as it is.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .preprocess import tensor_shapes
from .qdq import _attr, consumer_map

BLOCK = 16  # channels per block of ONNX Runtime's int8 depthwise kernel (measured; docs/quantization.md)
PADS = ("auto", "on", "off")
# channel-wise ops: output channel c depends on input channel c only
UNARY = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "LeakyRelu", "Elu", "Selu", "Softplus",
         "Identity", "Neg", "Abs", "Erf", "Gelu", "Mish", "Swish", "MaxPool", "AveragePool", "GlobalAveragePool",
         "GlobalMaxPool"}
ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}  # a Div only with the set as dividend: the added channels may hold 0


@dataclass
class ChannelSet:
    """Tensors sharing one channel axis of ``channels`` channels, and the convs that write, filter and read it."""

    channels: int
    tensors: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)  # convs writing the set (their filters widen)
    depthwise: set[str] = field(default_factory=set)  # depthwise convs inside it (filters and group widen)
    sinks: set[str] = field(default_factory=set)  # convs reading it (their input channels widen)
    blocked: str = ""  # why the set cannot be widened ("" if it can)

    def padded(self, block: int = BLOCK) -> int:
        return -(-self.channels // block) * block


def _channels(shapes: dict, t: str) -> int | None:
    s = shapes.get(t)
    return s[1] if s is not None and len(s) >= 2 and isinstance(s[1], int) and s[1] > 0 else None


def _weight_dims(inits: dict, node) -> list[int] | None:
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    return list(inits[node.input[1]].dims)


def _is_depthwise(inits: dict, node) -> bool:
    dims = _weight_dims(inits, node)
    return dims is not None and len(dims) == 4 and dims[1] == 1 and _attr(node, "group", 1) == dims[0] > 1


def _is_dense(inits: dict, node) -> bool:
    dims = _weight_dims(inits, node)
    return dims is not None and len(dims) == 4 and _attr(node, "group", 1) == 1


class _Graph:
    """The indexes the walk over a channel set reads."""

    def __init__(self, model):
        g = model.graph
        self.g = g
        self.inits = {i.name: i for i in g.initializer}
        self.consts = set(self.inits) | {n.output[0] for n in g.node if n.op_type == "Constant"}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = consumer_map(g)
        self.outputs = {o.name for o in g.output}
        self.nodes = {n.name: n for n in g.node}
        self.shapes = tensor_shapes(model) or {}  # no shapes: nothing is widened

    def channels(self, t: str) -> int | None:
        return _channels(self.shapes, t)


class _Walk:
    """Grows one channel set from a depthwise conv, tensor by tensor, until it is closed by convs or blocked."""

    def __init__(self, gr: _Graph, dw):
        self.gr = gr
        self.cs = ChannelSet(channels=list(gr.inits[dw.input[1]].dims)[0])
        self.cs.depthwise.add(dw.name)
        self.queue = []
        self.add(dw.input[0])
        self.add(dw.output[0])

    def block(self, why: str) -> None:
        self.cs.blocked = self.cs.blocked or why

    def add(self, t: str) -> None:
        if t not in self.cs.tensors:
            self.cs.tensors.add(t)
            self.queue.append(t)

    def operands(self, n, t: str) -> None:
        """The other operands of an elementwise op on the set: in the set, broadcast over channels, or a scalar."""
        gr, cs = self.gr, self.cs
        for i in n.input:
            if i == t or i in cs.tensors:
                continue
            c = gr.channels(i)
            if i in gr.consts:
                init = gr.inits.get(i)
                if init is not None and int(np.prod(init.dims)) != 1 or init is None and c not in (None, 1):
                    self.block(f"{n.name}: a per-channel constant")
            elif c == cs.channels:
                self.add(i)
            elif c != 1:
                self.block(f"{n.name}: an operand of unknown or other channel count")

    def producer(self, t: str) -> None:
        gr, cs = self.gr, self.cs
        p = gr.producer.get(t)
        if p is None:
            self.block(f"{t} is a graph input")
        elif _is_depthwise(gr.inits, p):
            if p.name not in cs.depthwise:
                cs.depthwise.add(p.name)
                self.add(p.input[0])
        elif _is_dense(gr.inits, p) and p.output[0] == t:
            cs.sources.add(p.name)
        elif p.op_type in UNARY:
            self.add(p.input[0])
        elif p.op_type in ELEMENTWISE and not (p.op_type == "Div" and gr.channels(p.input[1]) == cs.channels):
            self.operands(p, t)
        else:
            self.block(f"{t} is written by {p.op_type} {p.name}")

    def consumers(self, t: str) -> None:
        gr, cs = self.gr, self.cs
        for c in gr.consumers.get(t, []):
            if _is_depthwise(gr.inits, c) and c.input[0] == t:
                if c.name not in cs.depthwise:
                    cs.depthwise.add(c.name)
                    self.add(c.output[0])
            elif _is_dense(gr.inits, c) and c.input[0] == t:
                cs.sinks.add(c.name)
            elif c.op_type in UNARY and c.input[0] == t:
                self.add(c.output[0])
            elif c.op_type in ELEMENTWISE and not (c.op_type == "Div" and c.input[0] != t):
                self.add(c.output[0])
                self.operands(c, t)
            else:
                self.block(f"{t} is read by {c.op_type} {c.name}")

    def run(self) -> ChannelSet:
        gr, cs = self.gr, self.cs
        while self.queue and not cs.blocked:
            t = self.queue.pop()
            if gr.channels(t) != cs.channels:
                self.block(f"{t}: channel count not known to be {cs.channels}")
            elif t in gr.outputs:
                self.block(f"{t} is a graph output")
            else:
                self.producer(t)
                self.consumers(t)
        uses = {k: len(v) for k, v in gr.consumers.items()}
        for name in cs.sources | cs.depthwise | cs.sinks:
            if any(uses.get(i, 0) > 1 for i in gr.nodes[name].input[1:] if i in gr.inits):
                self.block(f"{name}: its weights are shared with another node")
        for name in cs.sources & cs.sinks:
            self.block(f"{name} reads and writes the set")
        return cs


def channel_sets(model, block: int = BLOCK) -> list[ChannelSet]:
    """The channel sets around each depthwise conv whose channel count is not a multiple of ``block`` (widenable
    or not: ``blocked`` says why not)."""
    inits = {i.name: i for i in model.graph.initializer}
    todo = [n for n in model.graph.node if _is_depthwise(inits, n) and list(inits[n.input[1]].dims)[0] % block]
    if not todo:
        return []
    gr, sets, seen = _Graph(model), [], set()
    for dw in todo:
        if dw.name not in seen:
            cs = _Walk(gr, dw).run()
            seen |= cs.depthwise
            sets.append(cs)
    return sets


def _pad(a: np.ndarray, axis: int, extra: int, value=0) -> np.ndarray:
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return np.pad(a, widths, constant_values=value)


def pad_channels(model, plan, qp, block: int = BLOCK):
    """Widen every widenable channel set of ``model`` (FP32, as planned) to a multiple of ``block`` channels, in a
    copy of the model and of ``qp``; returns ``(model, qp, report)``, the report listing each set's convs and
    channel counts (and why others were left)."""
    import copy

    import onnx
    from onnx import numpy_helper

    sets = channel_sets(model, block)
    report = {"block": block, "widened": [], "left": []}
    todo = [s for s in sets if not s.blocked]
    for s in sets:
        if s.blocked:
            report["left"].append({"depthwise": sorted(s.depthwise), "channels": s.channels, "why": s.blocked})
    if not todo:
        return model, qp, report
    m = onnx.ModelProto()
    m.CopyFrom(model)
    qp = copy.deepcopy(qp)
    inits = {i.name: i for i in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    bias_of = {node: b for node, (b, _, _) in plan.biases.items()}

    def widen(name: str, axis: int, extra: int) -> None:
        arr = numpy_helper.to_array(inits[name])
        inits[name].CopyFrom(numpy_helper.from_array(_pad(arr, axis, extra), name))
        wq = qp.weights.get(name)
        if wq is None:
            return
        wq.qweight = _pad(wq.qweight, axis, extra)
        if axis == wq.axis:  # new filters: zero weights on any positive scale
            wq.scale = _pad(wq.scale, 0, extra, float(wq.scale.max()) if wq.scale.size else 1.0)

    padded_tensors = set()
    for s in todo:
        extra = s.padded(block) - s.channels
        for name in s.sources | s.depthwise:
            n = nodes[name]
            widen(n.input[1], 0, extra)
            for b in {bias_of.get(name), n.input[2] if len(n.input) > 2 else None} - {None, ""}:
                if b in inits:
                    arr = numpy_helper.to_array(inits[b])
                    if arr.shape[0] == s.channels:
                        inits[b].CopyFrom(numpy_helper.from_array(_pad(arr, 0, extra), b))
            if name in qp.biases:
                qp.biases[name] = _pad(np.asarray(qp.biases[name]), 0, extra)
            if name in s.depthwise:
                for a in n.attribute:
                    if a.name == "group":
                        a.i = s.padded(block)
        for name in s.sinks:
            widen(nodes[name].input[1], 1, extra)
        padded_tensors |= s.tensors
        report["widened"].append({"depthwise": sorted(s.depthwise), "channels": s.channels,
                                  "padded": s.padded(block), "sources": sorted(s.sources), "sinks": sorted(s.sinks)})
    keep = [v for v in m.graph.value_info if v.name not in padded_tensors]  # their channel counts changed
    del m.graph.value_info[:]
    m.graph.value_info.extend(keep)
    return m, qp, report


MIN_GAIN = 0.03  # the widened file must be at least this much faster to replace the narrow one


def choose_padding(model, plan, qp, path: Path, shape: tuple[int, ...], block: int = BLOCK) -> dict | None:
    """Write the file at ``path`` (already written narrow from ``model``, ``plan``, ``qp``) once more with its
    depthwise convs widened, time both in turns at one thread, and keep the widened one at ``path`` where it is at
    least ``MIN_GAIN`` faster. Returns what was widened (or left, and why) and the timings; None if the network has
    no depthwise conv off the block."""
    import os

    from .qdq import write_qdq
    from .stem import time_files

    wide_model, wide_qp, report = pad_channels(model, plan, qp, block)
    if not report["widened"]:
        return report if report["left"] else None
    alt = path.with_name(path.stem + ".widened.onnx")
    with warnings.catch_warnings():  # the narrow file's writing has said it all
        warnings.simplefilter("ignore")
        write_qdq(wide_model, plan, wide_qp, alt)
    diff = _max_difference(path, alt, shape)
    if diff is not None:  # a pattern the walk took for channel-wise and is not: keep no file that computes otherwise
        alt.unlink(missing_ok=True)
        warnings.warn(f"{path}: the file with its depthwise convs widened computed other outputs (largest difference "
                      f"{diff:.3g}); kept the narrow one. Please report the network (pad_channels='off' silences "
                      "this)", stacklevel=3)
        report.update({"chosen": "narrow", "narrow_ms": None, "widened_ms": None, "min_gain": MIN_GAIN,
                       "mismatch": diff})
        return report
    narrow_ms, wide_ms = time_files([path, alt], shape)
    chosen = "widened" if wide_ms < narrow_ms * (1 - MIN_GAIN) else "narrow"
    if chosen == "widened":
        os.replace(alt, path)
    else:
        alt.unlink(missing_ok=True)
    report.update({"chosen": chosen, "narrow_ms": narrow_ms, "widened_ms": wide_ms, "min_gain": MIN_GAIN})
    return report


def _max_difference(a: Path, b: Path, shape: tuple[int, ...]) -> float | None:
    """None if the two files give the same outputs on one random input (within 1e-4 of each output's largest value:
    identical on every network tried; a filter moved to the wrong channel of a test network changed it by 0.75%),
    else the largest difference."""
    from ..runtime import timing_runner

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    worst = None
    for ya, yb in zip(timing_runner(a, x)(), timing_runner(b, x)()):
        ya, yb = np.asarray(ya, np.float64), np.asarray(yb, np.float64)
        d = float(np.abs(ya - yb).max()) if ya.size else 0.0
        if ya.shape != yb.shape or d > 1e-4 * float(np.abs(ya).max(initial=0.0)) + 1e-7:
            worst = max(worst or 0.0, d if ya.shape == yb.shape else float("inf"))
    return worst
