"""Grouped convolutions in int8 or in float, decided layer by layer by timing both (``PTQConfig.grouped_convs``).

ONNX Runtime's ``QLinearConv`` is fast on depthwise convs and on grouped convs with several channels per group,
and slow where the groups are narrow: ResNeXt-50's first-stage 3x3 convs (32 groups of 4 channels) took 9.0 ms
in int8 against 4.8 ms in float (Q/DQ included), while RegNetY-400MF's groups of 8 channels and ResNeXt's later
stages were faster in int8 (docs/quantization.md). Where that line falls depends on the CPU's int8 instructions, so
with ``grouped_convs="auto"`` each distinct grouped conv (weight shape, attributes, input size) is written twice as
a small int8 chain -- a 1x1 depthwise int8 conv, the layer, a 1x1 depthwise int8 conv, as its neighbours leave it --
once with the layer in int8 and once in float between DequantizeLinear and QuantizeLinear, the files timed in turns
at one thread; the layer stays float only where that is clearly faster (``MIN_GAIN``).

Depthwise convs are candidates only where their channel count is off the int8 kernel's block of 16 and they cannot
be widened to it (``quant.pad``: GhostNet's "cheap" convs, whose outputs are concatenated; with
``pad_channels="off"``, every such conv): there the int8 kernel runs channel by channel, and GhostNet-100's 8- to
60-channel depthwise convs took 4.7 ms in int8 against 1.5 ms in float (profiler, one thread, AMD EPYC). Depthwise
convs on the block are int8 (faster, or within 0.1 ms, on every one measured). Channel-multiplier convs are float
for ONNX Runtime by rule (``qdq.channel_multiplier_convs``).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .qdq import _attr
from .stem import time_files

GROUPED = ("auto", "int8", "float")
MIN_GAIN = 0.10  # float must be at least this much faster for the layer to leave int8
BUDGET_S = 30.0  # timing stops after this long; the layers not yet timed stay int8 (and are reported)


def grouped_convs(model) -> list[str]:
    """Names of the 2-D grouped convs with more than one input channel per group (ResNeXt, RegNet): the convs whose
    int8 kernel speed depends on the group width."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        dims = list(inits[n.input[1]].dims)
        if _attr(n, "group", 1) > 1 and len(dims) == 4 and dims[1] > 1:
            out.append(n.name)
    return out


def narrow_depthwise_convs(model, widen: bool) -> list[str]:
    """Names of the depthwise convs whose channel count is not a multiple of the int8 kernel's block and that will
    not be widened to it: with ``widen`` (``pad_channels`` auto or on), those of channel sets ``quant.pad`` cannot
    widen; without, all of them."""
    from .pad import BLOCK, _is_depthwise, channel_sets

    if widen:
        return sorted(name for cs in channel_sets(model) if cs.blocked for name in cs.depthwise)
    inits = {i.name: i for i in model.graph.initializer}
    return [n.name for n in model.graph.node if _is_depthwise(inits, n) and list(inits[n.input[1]].dims)[0] % BLOCK]


def conv_input_shapes(model, names: list[str], image_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The input shape of each named conv for one image of ``image_shape``, from one run of the FP32 graph
    (shape inference loses sizes behind dynamic reshapes, e.g. ShuffleNet's channel shuffle)."""
    from .calibrate import iterate_tensors

    nodes = {n.name: n for n in model.graph.node}
    wanted = sorted({nodes[k].input[0] for k in names})
    shapes = {t: v.shape for t, v in iterate_tensors(model, wanted, [np.zeros(image_shape, np.float32)])}
    return {k: tuple(shapes[nodes[k].input[0]]) for k in names}


def _chain(node, weight: np.ndarray, bias: np.ndarray, in_shape: tuple[int, ...]):
    """FP32 model: 1x1 depthwise conv -> ReLU -> the layer -> ReLU -> 1x1 depthwise conv, at ``in_shape``."""
    from onnx import TensorProto, helper, numpy_helper

    cin, cout = in_shape[1], weight.shape[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inits = [numpy_helper.from_array(np.full((cin, 1, 1, 1), 0.5, np.float32), "pre_w"),
             numpy_helper.from_array(weight.astype(np.float32), "mid_w"),
             numpy_helper.from_array(bias.astype(np.float32), "mid_b"),
             numpy_helper.from_array(np.full((cout, 1, 1, 1), 0.5, np.float32), "post_w")]
    nodes = [helper.make_node("Conv", ["x", "pre_w"], ["a"], name="pre", group=cin),
             helper.make_node("Relu", ["a"], ["ar"], name="pre_relu"),
             helper.make_node("Conv", ["ar", "mid_w", "mid_b"], ["m"], name="layer", **attrs),
             helper.make_node("Relu", ["m"], ["mr"], name="layer_relu"),
             helper.make_node("Conv", ["mr", "post_w"], ["y"], name="post", group=cout)]
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [in_shape[0], cout, None, None])],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _write_chain(chain, keep: set[str], path: Path) -> Path:
    """The chain as slimzoo writes it (the same writer as every INT8 file), ``keep`` in float."""
    import onnx

    from .qdq import compute_qparams, plan_qdq, write_qdq

    m = onnx.ModelProto()
    m.CopyFrom(chain)
    plan = plan_qdq(m, keep, output_float=False)  # the chain's last conv is timed like the others
    ranges = {t: ((-2.0, 2.0) if t == "x" else (0.0, 4.0)) for t in plan.activations}  # timing does not need real ones
    return write_qdq(m, plan, compute_qparams(m, plan, ranges), path)


def choose_grouped(model, image_shape: tuple[int, ...], keep: set[str] = frozenset(),
                   budget_s: float = BUDGET_S, widen: bool = True) -> dict:
    """Time each grouped conv of ``model`` (preprocessed FP32 ONNX), and each narrow depthwise conv that will not be
    widened (:func:`narrow_depthwise_convs`), in int8 and in float in its chain; returns ``{"float": [names kept
    float], "layers": {name: {int8_ms, float_ms, chosen}}, "untimed": [names], "seconds": s}``. Layers with the
    same weight shape, attributes and input shape share one timing."""
    from onnx import numpy_helper

    names = [n for n in grouped_convs(model) + narrow_depthwise_convs(model, widen) if n not in keep]
    result = {"float": [], "layers": {}, "untimed": [], "seconds": 0.0, "min_gain": MIN_GAIN}
    if not names:
        return result
    start = time.perf_counter()
    shapes = conv_input_shapes(model, names, image_shape)
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    timed: dict[tuple, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            node = nodes[name]
            w = numpy_helper.to_array(inits[node.input[1]])
            key = (w.shape, shapes[name], str(sorted((a.name, str(a)) for a in node.attribute)))
            if key not in timed:
                if timed and time.perf_counter() - start > budget_s:  # the first shape is always timed
                    result["untimed"].append(name)
                    continue
                b = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits \
                    else np.zeros(w.shape[0], np.float32)
                chain = _chain(node, w, b, shapes[name])
                files = [_write_chain(chain, set(), Path(d) / "int8.onnx"),
                         _write_chain(chain, {"layer"}, Path(d) / "float.onnx")]
                int8_ms, float_ms = time_files(files, shapes[name], rounds=8, calls=5, budget_s=1.5)
                timed[key] = {"int8_ms": int8_ms, "float_ms": float_ms,
                              "chosen": "float" if float_ms < int8_ms * (1 - MIN_GAIN) else "int8"}
            result["layers"][name] = dict(timed[key])
            if timed[key]["chosen"] == "float":
                result["float"].append(name)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result
