"""Where quantization goes in an ONNX graph (the plan) and the one writer of QDQ ONNX files.

The placement follows what ONNX Runtime fuses into integer kernels: every activation
entering or leaving Conv/Gemm/MatMul/Add/Concat/pooling gets one QuantizeLinear ->
DequantizeLinear pair (shared by all consumers), weights get a per-channel int8
DequantizeLinear, biases an int32 one. A ReLU or Clip(0, x) right after a conv or add
is dropped: a uint8 quantizer with zero point 0 clamps at zero by itself, so the fused
kernel computes the activation for free. Data-movement ops (MaxPool, Flatten, ...) reuse
their input's qparams so the runtime can run them on uint8 directly.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .qparams import (QuantParams, WeightQParams, activation_qparams, bias_safe_weight_scale, quantize_bias,
                      quantize_weight, weight_qparams)

COMPUTE = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op -> index of the weight input
# convolutions: ONNX Runtime has no conv kernel with integer inputs and a float output, so their output
# is always quantized (the op after runs on it directly or between DequantizeLinear and QuantizeLinear)
CONV_OPS = {"Conv", "ConvTranspose"}
# ops with an integer kernel in ONNX Runtime's CPU provider when Q/DQ surround them (QLinearAdd, QLinearMul,
# QLinearConcat, QLinearGlobalAveragePool, QLinearAveragePool, QLinearSigmoid, QLinearLeakyRelu,
# QLinearSoftmax; Resize runs on uint8 directly); the choice of each is measured in docs/quantization.md
QUANT_IO = {"Add", "Mul", "Concat", "GlobalAveragePool", "AveragePool", "Resize", "Sigmoid", "LeakyRelu",
            "Softmax"}
# --target openvino: only the ops NNCF quantizes around (OpenVINO runs Sigmoid, Mul, Softmax, Resize in float and
# pays for every Q/DQ pair around them: EfficientNet-B0's SiLU gates cost 2x at one thread with them quantized)
OPENVINO_IO = {"Add", "Concat", "GlobalAveragePool", "AveragePool"}
# per-channel affine ops that OpenVINO merges a dequantization into (see _find_region)
OPENVINO_AFFINE = frozenset({"BatchNormalization"})
BINARY = {"Add", "Mul"}  # their integer kernels need both inputs quantized: no float constant operand
# MatMul between two activations (attention's Q.K^T and A.V), per target runtime: float in ONNX Runtime, as measured
# faster on torchvision's ViT (benchmarks/qdq_placement.py toggles it); int8 in OpenVINO (ViT-B/16 144 -> 116 ms at
# one thread, docs/quantization.md), except where the product is divided by part of itself (linear attention,
# timm's EfficientViT: q @ (k^T v) over its last column; int8 there cost 14 dB of output SQNR)
ACTIVATION_MATMUL = {"onnxruntime": False, "openvino": True}
PASSTHROUGH = {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Slice", "Split",
               "Gather"}


@dataclass
class QdqPlan:
    """Which tensors are quantized and how; built from an FP32 ONNX model by ``plan_qdq``."""

    activations: list[str] = field(default_factory=list)  # calibrated activation tensors
    shared: dict[str, str] = field(default_factory=dict)  # passthrough output -> tensor whose qparams it reuses
    weights: dict[str, tuple[int, str]] = field(default_factory=dict)  # initializer -> (axis, node name)
    # node name -> (bias initializer, input tensor, weight initializer); per node, since the exporter may
    # share one bias initializer between convs whose accumulator scales differ
    biases: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    folded: dict[str, str] = field(default_factory=dict)  # removed ReLU/Clip node name -> its output tensor
    layers: list[str] = field(default_factory=list)  # names of quantized Conv/Gemm/MatMul nodes
    kept_fp32: list[str] = field(default_factory=list)  # weighted nodes left in float as asked (keep_fp32)
    modules: dict[str, str] = field(default_factory=dict)  # node name -> PyTorch module name (from its weight)
    # Mul/Div by a positive constant on a quantized tensor: removed; readers of its output get a
    # DequantizeLinear of the source's uint8 tensor with the scale multiplied by the factor (free)
    rescaled: dict[str, tuple[str, float]] = field(default_factory=dict)  # output -> (quantized source, factor)
    rescale_nodes: set[str] = field(default_factory=set)  # names of the removed Mul/Div nodes
    constants: dict[str, float] = field(default_factory=dict)  # scalar constant operand of a quantized op -> value
    # tensors put on one range (unify_ranges): --target openvino, the inputs of a Concat (OpenVINO then concatenates
    # int8 data, as with NNCF's files; the Concat's output carries no quantizer of its own); ONNX Runtime, a Concat's
    # inputs and output where their calibrated ranges are close (QLinearConcat then copies bytes)
    unified: list[list[str]] = field(default_factory=list)
    target: str = "onnxruntime"  # the runtime the placement is made for


def _const_value(model, name: str):
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(n.attribute[0].t)
    return None


def consumer_map(graph) -> dict[str, list]:
    """Tensor name -> the nodes that read it (of a graph, or of a list of nodes)."""
    consumers: dict[str, list] = defaultdict(list)
    for n in getattr(graph, "node", graph):
        for i in n.input:
            consumers[i].append(n)
    return consumers


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


def module_name(node, inits: set[str]) -> str:
    """The PyTorch module a Conv/Gemm/MatMul node came from (its weight's name less ``.weight``)."""
    if node.op_type in COMPUTE and len(node.input) > 1 and node.input[1] in inits \
            and node.input[1].endswith(".weight"):
        return node.input[1][: -len(".weight")]
    return node.name


def _non_float_tensors(model) -> set[str]:
    """Names of tensors that shape inference types as anything but float32."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    vis = list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)
    return {v.name for v in vis if v.type.tensor_type.elem_type not in (0, onnx.TensorProto.FLOAT)}


TARGETS = ("onnxruntime", "openvino")


class _Graph:
    """An FP32 ONNX graph as the planner reads it: initializers, producers, consumers, non-float tensors."""

    def __init__(self, model, keep_fp32: set[str], target: str):
        g = model.graph
        self.model, self.g, self.target = model, g, target
        self.inits = {i.name for i in g.initializer}
        # the exporter deduplicates equal initializers behind Identity nodes: see through them
        self.alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in self.inits}
        self.keep_fp32 = keep_fp32 | {n.name for n in g.node if module_name(n, self.inits) in keep_fp32}
        self.consts = self.inits | {n.output[0] for n in g.node if n.op_type == "Constant"}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers = consumer_map(g)
        self.graph_outputs = {o.name for o in g.output}
        self.nonfloat = _non_float_tensors(model)  # shape arithmetic (e.g. a detector's decoding) stays as it is
        self.rescale: dict[str, tuple[str, float]] = {}  # Mul/Div node name -> (input tensor, factor)
        self.rescaled_acts: set[str] = set()  # rescale outputs that were activations to quantize before
        self.region: set[str] = set()  # names of the nodes that run in INT8

    def scalar(self, t: str) -> float | None:
        if t not in self.consts:
            return None
        v = _const_value(self.model, t)
        return float(np.asarray(v).ravel()[0]) if v is not None and np.asarray(v).size == 1 else None

    def feeds(self, t: str, accept, seen: set, through: frozenset = frozenset()) -> bool:
        """Whether ``t`` reaches a node for which ``accept`` holds, through data movement (and ReLU) only, and
        through the op types in ``through``."""
        for c in self.consumers[t]:
            if accept(c):
                return True
            moves = (c.op_type in PASSTHROUGH and c.input[0] == t or c.op_type in ("Relu", "Clip")
                     or c.name in self.rescale or c.op_type in through)
            if moves and c.name not in self.keep_fp32:
                for o in c.output:
                    if o not in seen:
                        seen.add(o)
                        if self.feeds(o, accept, seen, through):
                            return True
        return False

    def feeds_quantized(self, t: str) -> bool:
        """Whether ``t`` reaches a quantized op (through data movement only). A tensor that does not, such as a
        detector's raw head output going into float box decoding, keeps full precision."""
        return self.feeds(t, lambda c: c.name in self.region, set())


def _find_rescales(gr: _Graph) -> None:
    """Mul/Div of an activation by a positive scalar constant (a hard activation's 1/6): a change of scale only."""
    for n in gr.g.node:
        if n.op_type not in ("Mul", "Div") or n.name in gr.keep_fp32 or len(n.input) != 2:
            continue
        a, b = (n.input[0], gr.scalar(n.input[1])), (n.input[1], gr.scalar(n.input[0]))
        for x, c in (a, b) if n.op_type == "Mul" else (a,):
            if c is not None and c > 0 and x not in gr.consts and n.output[0] not in gr.graph_outputs:
                gr.rescale[n.name] = (x, c if n.op_type == "Mul" else 1.0 / c)
                break


def _find_region(gr: _Graph) -> None:
    """Which ops run in INT8: every conv/gemm/matmul with constant weights, and an op with an integer kernel (add,
    mul, concat, pooling, sigmoid, ...) when its output feeds one of those, so that float post-processing in the
    graph (a detector's box decoding: sigmoid, grid add, the final concat of boxes and scores) stays float.
    Decided in reverse topological order, so a chain (sigmoid -> mul -> conv) joins from the conv backwards."""
    for n in gr.g.node:
        if n.name in gr.keep_fp32 or n.output[0] in gr.nonfloat:
            continue
        if n.op_type in COMPUTE and len(n.input) > COMPUTE[n.op_type] and n.input[COMPUTE[n.op_type]] in gr.inits:
            gr.region.add(n.name)
        elif ACTIVATION_MATMUL[gr.target] and n.op_type == "MatMul" and not any(i in gr.consts for i in n.input) \
                and not gr.feeds(n.output[0], lambda c: c.op_type == "Div" and c.input[1] not in gr.consts, set(),
                                 frozenset({"MatMul", "Add"})):
            gr.region.add(n.name)
    io = QUANT_IO if gr.target == "onnxruntime" else OPENVINO_IO
    for n in reversed(gr.g.node):
        if n.op_type not in io or n.name in gr.keep_fp32 or n.output[0] in gr.nonfloat or n.name in gr.rescale:
            continue
        if n.op_type in BINARY and any(i in gr.consts and gr.scalar(i) is None for i in n.input):
            continue  # a constant tensor operand (a bias add, a layer scale) keeps the op in float
        # OpenVINO: a Concat whose output is scaled per channel on its way to a conv (DenseNet's pre-activation
        # BatchNorm) still concatenates int8 data; the runtime folds the dequantization into the BatchNorm
        through = OPENVINO_AFFINE if gr.target == "openvino" and n.op_type == "Concat" else frozenset()
        if gr.feeds(n.output[0], lambda c: c.name in gr.region, set(), through):
            gr.region.add(n.name)


def _fold_activations(gr: _Graph, plan: QdqPlan) -> dict[str, str]:
    """Activations folded into the op before them: out(P) -> ReLU/Clip(0, x) -> Y becomes P -> Y. Returns
    {output of P: the tensor that will carry the quantized value}."""
    effective_out: dict[str, str] = {}
    for n in gr.g.node:
        if n.op_type not in ("Relu", "Clip") or n.name in gr.keep_fp32:
            continue
        x = n.input[0]
        p = gr.producer.get(x)
        if p is None or p.name not in gr.region or p.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add"):
            continue
        if len(gr.consumers[x]) != 1 or x in gr.graph_outputs or \
                (p.op_type not in CONV_OPS or gr.target != "onnxruntime") and not gr.feeds_quantized(n.output[0]):
            continue  # a folded ReLU needs the uint8 tensor after it (a conv's output always has one)
        if n.op_type == "Clip":
            lo = _const_value(gr.model, n.input[1]) if len(n.input) > 1 and n.input[1] else _attr(n, "min")
            if lo is None or float(np.asarray(lo)) != 0.0:
                continue
        plan.folded[n.name] = n.output[0]
        effective_out[x] = n.output[0]
    return effective_out


def _activation_tensors(gr: _Graph, plan: QdqPlan, effective_out: dict[str, str]) -> list[str]:
    """The activation tensors around quantized ops (calibrated), and the weights, biases and scalar constants of
    those ops recorded in ``plan``."""
    acts: list[str] = []

    def add(t: str) -> None:
        if t and t not in gr.consts and t not in acts and t not in gr.nonfloat:
            acts.append(t)

    for n in gr.g.node:
        if n.name not in gr.region:
            continue
        if n.op_type in COMPUTE:
            w = n.input[COMPUTE[n.op_type]]
            if w not in gr.inits:  # activation x activation MatMul (only with ACTIVATION_MATMUL)
                add(n.input[0])
                add(w)
                if gr.feeds_quantized(n.output[0]):
                    add(n.output[0])
                continue
            add(n.input[0])
            axis = 0
            if n.op_type == "Gemm" and not _attr(n, "transB", 0) or n.op_type in ("MatMul", "ConvTranspose"):
                axis = 1
            plan.weights.setdefault(w, (axis, n.name))
            b = gr.alias.get(n.input[2], n.input[2]) if len(n.input) > 2 else ""
            if b in gr.inits:
                plan.biases[n.name] = (b, n.input[0], w)
            plan.layers.append(n.name)
            plan.modules[n.name] = module_name(n, gr.inits)
        else:
            for i in n.input:
                if i not in gr.consts:
                    add(i)
                elif n.op_type in BINARY:  # a scalar: quantized exactly, so the integer kernel takes it
                    plan.constants[i] = gr.scalar(i)
        out = effective_out.get(n.output[0], n.output[0])
        if n.op_type in CONV_OPS and gr.target == "onnxruntime":
            add(out)  # whatever follows: the runtime fuses a conv only with a QuantizeLinear after it
        elif out not in gr.graph_outputs and (n.op_type in QUANT_IO or gr.feeds_quantized(out)):
            add(out)
    return acts


def _share_passthrough(gr: _Graph, plan: QdqPlan, acts: list[str]) -> None:
    """Data-movement ops between quantized tensors reuse their input's qparams; a rescale reads the quantized
    source with a scaled DequantizeLinear. Repeated until nothing changes (chains of them)."""
    changed = True
    while changed:
        changed = False
        for n in gr.g.node:
            if n.name in gr.rescale and n.output[0] not in plan.rescaled:
                x, factor = gr.rescale[n.name]
                if x in plan.rescaled:
                    x, f0 = plan.rescaled[x]
                    factor *= f0
                if x in acts or x in plan.shared:
                    o = n.output[0]
                    if o in acts:
                        acts.remove(o)
                        gr.rescaled_acts.add(o)
                    plan.rescaled[o] = (x, factor)
                    plan.rescale_nodes.add(n.name)
                    changed = True
                continue
            if n.op_type in PASSTHROUGH and n.name not in gr.keep_fp32 and n.input[0] in (set(acts) | set(plan.shared)):
                for o in n.output:  # Split has several
                    if o in acts:
                        acts.remove(o)
                    if o not in plan.shared and o not in gr.graph_outputs and o not in gr.nonfloat:
                        plan.shared[o] = plan.shared.get(n.input[0], n.input[0])
                        changed = True


def channel_multiplier_convs(model) -> list[str]:
    """Grouped convs that read one input channel per group and write several (a depthwise conv with a channel
    multiplier, FastViT's downsampling 7x7). ONNX Runtime's ``QLinearConv`` has a fast path for depthwise convs with
    one output per group only: FastViT-T8's 7x7 stride-2 ones took 20.7 ms in int8 against 2.1 ms in float, and the
    INT8 file ran 57.7 ms against FP32 26.0 ms; with them in float 31.1 ms (docs/quantization.md). The ONNX Runtime
    placement leaves them in float."""
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        groups, dims = _attr(n, "group", 1), list(inits[n.input[1]].dims)
        if groups > 1 and len(dims) >= 3 and dims[1] == 1 and dims[0] > groups:
            out.append(n.name)
    return out


# an output conv holding at most this share of the model's weights runs in float (output_convs="float"): the
# prediction convs of YOLOv3 hold 0.1-0.3% (measured: docs/quantization.md "Output convs")
OUTPUT_CONV_SHARE = 0.02
OUTPUT_CONVS = ("float", "int8")


def output_convs(model, keep_fp32: set[str] | None = None) -> list[str]:
    """Convs whose output reaches no other op that runs in INT8, by any path: what follows them is float
    post-processing or the model's outputs (a detector's prediction convs, whose raw outputs go to box decoding; a
    segmenter's classifier before a float Resize), each holding at most ``OUTPUT_CONV_SHARE`` of the model's
    weights. ONNX Runtime has no conv kernel with integer inputs and a float output, so an integer conv rounds its
    output to one uint8 grid: for a YOLOv3 head that grid is shared by box offsets (decoded through ``exp``),
    objectness and class scores, and the INT8 detectors lost 0.65-0.80 box mAP to it (0.0 with the three
    prediction convs in float)."""
    gr = _Graph(model, set(keep_fp32 or ()), "onnxruntime")
    _find_rescales(gr)
    _find_region(gr)
    return _output_convs(gr)


def _output_convs(gr: _Graph) -> list[str]:
    """:func:`output_convs` on a graph whose INT8 region is found."""
    def weights(n) -> int:
        w = n.input[COMPUTE[n.op_type]] if len(n.input) > COMPUTE[n.op_type] else ""
        return sizes.get(gr.alias.get(w, w), 0)

    def reaches_region(t: str) -> bool:  # through any op, float ones included
        seen, stack = {t}, [t]
        while stack:
            for c in gr.consumers[stack.pop()]:
                if c.name in gr.region:
                    return True
                stack.extend(o for o in c.output if o not in seen)
                seen.update(c.output)
        return False

    sizes = {i.name: int(np.prod(i.dims)) for i in gr.g.initializer}
    total = sum(weights(n) for n in gr.g.node if n.op_type in COMPUTE)
    return [n.name for n in gr.g.node if n.op_type in CONV_OPS and n.name in gr.region
            and weights(n) <= OUTPUT_CONV_SHARE * total and not reaches_region(n.output[0])]


def plan_qdq(model, keep_fp32: set[str] | None = None, target: str = "onnxruntime",
             output_float: bool = True) -> QdqPlan:
    """Decide quantization placement for an FP32 ONNX model.

    ``keep_fp32`` names layers to leave in float, by ONNX node name or PyTorch module name. ``target``:
    ``onnxruntime`` quantizes every conv's output (its integer conv kernels need the QuantizeLinear after
    the conv) and leaves channel-multiplier convs in float (:func:`channel_multiplier_convs`), and with
    ``output_float`` the small convs whose output no integer op reads (:func:`output_convs`); ``openvino``
    quantizes a conv's output only where an integer op reads it, as NNCF does
    (OpenVINO runs a conv in int8 from its quantized inputs alone, and a QuantizeLinear before a float op
    such as Hardswish only costs it time).
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown target runtime {target!r}; choose one of {', '.join(TARGETS)}")
    keep = set(keep_fp32 or ())
    if target == "onnxruntime":
        keep |= set(channel_multiplier_convs(model))
    gr = _Graph(model, keep, target)
    plan = QdqPlan(target=target)
    _find_rescales(gr)
    _find_region(gr)
    if target == "onnxruntime" and output_float:  # openvino leaves an output conv's output unquantized anyway
        extra = _output_convs(gr)
        if extra:  # those convs leave the region, and so may the ops that fed only them
            gr.keep_fp32 |= set(extra)
            gr.region.clear()
            _find_region(gr)
    plan.kept_fp32 = [n.name for n in gr.g.node if n.name in gr.keep_fp32 and n.op_type in COMPUTE
                      and len(n.input) > COMPUTE[n.op_type] and n.input[COMPUTE[n.op_type]] in gr.inits]
    effective_out = _fold_activations(gr, plan)
    acts = _activation_tensors(gr, plan, effective_out)
    _share_passthrough(gr, plan, acts)
    if target == "openvino":
        _openvino_data_movement(gr, plan, acts)
    else:
        _concat_groups(gr, plan, acts)
    plan.activations = acts
    return plan


def _openvino_data_movement(gr: _Graph, plan: QdqPlan, acts: list[str]) -> None:
    """OpenVINO moves a dequantization through data movement by itself (MaxPool, Reshape, Concat of inputs on
    one scale), so a quantizer after them only costs time: no re-quantization of a passthrough's output, and the
    inputs of a Concat on one shared range instead of a quantizer on its output. A Concat input that comes out of
    a passthrough (DenseNet's first MaxPool) shares the range of the passthrough's quantized source. Inputs shared
    by several Concats (a DenseNet block's) put all of them on one range. Measured against NNCF's files
    (docs/quantization.md)."""
    source = dict(plan.shared)
    plan.shared = {}
    quantized = set(acts)
    groups: list[set[str]] = []
    # a rescale reads its source's uint8 tensor; one whose source was a passthrough's output (no quantizer now)
    # stays a float Mul/Div, its output quantized again where it was before (DeiT's attention scale after a Reshape)
    for o, (src, _) in list(plan.rescaled.items()):
        if src not in quantized:
            del plan.rescaled[o]
            plan.rescale_nodes.discard(next(n.name for n in gr.g.node if o in n.output))
            if o in gr.rescaled_acts:
                acts.append(o)
                quantized.add(o)

    def resolve(t: str | None) -> str | None:  # the quantized tensor whose range ``t`` carries
        while t is not None and t not in quantized:
            t = source.get(t)
        return t

    for n in gr.g.node:
        if n.op_type != "Concat" or n.output[0] not in acts or len(n.input) < 2:
            continue
        srcs = [resolve(i) for i in n.input]
        if any(s is None for s in srcs) or any(i in plan.rescaled for i in n.input):
            continue
        acts.remove(n.output[0])
        quantized.discard(n.output[0])
        source[n.output[0]] = srcs[0]  # a Concat of this Concat joins its group
        _merge_group(groups, set(srcs))
    plan.unified = _in_plan_order(groups, acts)


def _merge_group(groups: list[set[str]], group: set[str]) -> None:
    """Add ``group`` to ``groups``, merged with every group it shares a tensor with."""
    for other in [g for g in groups if g & group]:
        group |= other
        groups.remove(other)
    groups.append(group)


def _in_plan_order(groups: list[set[str]], acts: list[str]) -> list[list[str]]:
    order = {t: k for k, t in enumerate(acts)}
    return [sorted(g, key=order.__getitem__) for g in groups]


def _concat_groups(gr: _Graph, plan: QdqPlan, acts: list[str]) -> None:
    """ONNX Runtime: the inputs and output of a quantized Concat are grouped to share one range
    (:func:`unify_ranges`), so that its ``QLinearConcat`` copies bytes instead of re-quantizing every input
    through a lookup table (GhostNet-100: 32 concats 1.19 ms as lookups, docs/quantization.md). A Concat input that
    comes out of a passthrough (ShuffleNet's split) takes its quantized source into the group; groups that share a
    tensor merge. Whether a group is unified depends on its calibrated ranges (:data:`CONCAT_SPREAD`)."""
    quantized = set(acts)
    groups: list[set[str]] = []
    for n in gr.g.node:
        if n.op_type != "Concat" or n.output[0] not in quantized or len(n.input) < 2 \
                or any(i in plan.rescaled for i in n.input):
            continue
        srcs = [i if i in quantized else plan.shared.get(i) for i in n.input]
        if any(s is None or s not in quantized for s in srcs):
            continue
        _merge_group(groups, {*srcs, n.output[0]})
    plan.unified = _in_plan_order(groups, acts)


# ONNX Runtime placement: a Concat group is put on one range only where the widest of its tensors' ranges is at most
# this many times the narrowest (a tensor on a range twice its own loses one bit), measured: docs/quantization.md
CONCAT_SPREAD = 2.0


def unified_spans(plan: QdqPlan, qp: QuantParams) -> list[tuple[list[str], float, float]]:
    """(group, lo, hi) for each group of ``plan.unified`` that goes on one range, the range covering all its
    tensors' grids: every group for OpenVINO; for ONNX Runtime those of uint8 tensors within :data:`CONCAT_SPREAD`
    of each other."""
    out = []
    for group in plan.unified:
        qs = [qp.activations[t] for t in group if t in qp.activations]
        if len(qs) != len(group):
            continue
        spans = [(q.scale * (q.qrange[0] - q.zero_point), q.scale * (q.qrange[1] - q.zero_point)) for q in qs]
        if plan.target == "onnxruntime":
            widths = [b - a for a, b in spans]
            if any(q.signed for q in qs) or max(widths) > CONCAT_SPREAD * min(widths):
                continue
        out.append((group, min(s[0] for s in spans), max(s[1] for s in spans)))
    return out


def unify_ranges(plan: QdqPlan, qp: QuantParams) -> QuantParams:
    """Give each group of ``plan.unified`` that :func:`unified_spans` keeps one set of qparams covering all its
    tensors: symmetric with zero point 0 for OpenVINO, asymmetric uint8 for ONNX Runtime."""
    from .qparams import activation_qparams

    for group, lo, hi in unified_spans(plan, qp):
        u = activation_qparams(lo, hi, symmetric=plan.target == "openvino")
        for t in group:
            qp.activations[t] = u
    return qp


def with_rescaled(plan: QdqPlan, qp: QuantParams) -> QuantParams:
    """``qp`` with the qparams of every rescaled tensor added (its source's, the scale times the factor), so that
    a conv reading one quantizes its bias on the right accumulator scale."""
    from .qparams import TensorQParams

    for o, (src, factor) in plan.rescaled.items():
        a = qp.activations.get(plan.shared.get(src, src))
        if a is not None:
            qp.activations[o] = TensorQParams(float(np.float32(a.scale * factor)), a.zero_point, a.signed)
    return qp


def compute_qparams(model, plan: QdqPlan, ranges: dict[str, tuple[float, float]], symmetric: bool = False
                    ) -> QuantParams:
    """Turn observed ranges and the model's weights into the quantization parameters (activations symmetric,
    zero point 0, with ``symmetric``)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    qp = QuantParams()
    for t in plan.activations:
        if t not in ranges:
            raise ConfigError(f"calibration did not observe tensor {t!r}")
        if not all(np.isfinite(v) for v in ranges[t]):
            raise ConfigError(f"activation {t!r} is NaN or infinite on the calibration images: the FP32 model "
                              "itself produces non-finite values; check its weights and inputs before quantizing")
        qp.activations[t] = activation_qparams(*ranges[t], symmetric=symmetric)
    unify_ranges(plan, qp)
    for w, (axis, _) in plan.weights.items():
        value = numpy_helper.to_array(inits[w]).astype("float32")
        if not np.isfinite(value).all():
            raise ConfigError(f"weight {w!r} holds {int((~np.isfinite(value)).sum())} NaN or infinite value(s); "
                              "nothing was written")
        qp.weights[w] = weight_qparams(value, axis)
    return with_rescaled(plan, qp)


def fit_biases(model, plan: QdqPlan, qp: QuantParams) -> tuple[QuantParams, list[str]]:
    """``qp`` with weight scales raised on the channels whose int32 bias would otherwise saturate.

    Returns the new parameters and the nodes whose weights were re-scaled (a channel of near-zero weights
    and a sizeable bias: its weights lose nothing, and the bias stays exact instead of clipping).
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    weights, touched = dict(qp.weights), []
    for node_name, (b, x, w) in plan.biases.items():
        x_src = plan.shared.get(x, x)
        if x_src not in qp.activations or w not in weights:
            continue
        bias = qp.biases.get(node_name)
        if bias is None:
            bias = numpy_helper.to_array(inits[b]).astype(np.float32)
        wq = weights[w]
        safe = bias_safe_weight_scale(bias, qp.activations[x_src].scale, wq.scale)
        if np.array_equal(safe, wq.scale):
            continue
        raised = safe != wq.scale
        w_fp = numpy_helper.to_array(inits[w]).astype(np.float32)
        qweight = wq.qweight.copy()
        fresh = quantize_weight(w_fp, safe, wq.axis)
        idx = [slice(None)] * qweight.ndim
        idx[wq.axis] = raised
        qweight[tuple(idx)] = fresh[tuple(idx)]
        weights[w] = WeightQParams(scale=safe, qweight=qweight, axis=wq.axis)
        touched.append(node_name)
    return QuantParams(activations=qp.activations, weights=weights, biases=qp.biases), touched


class _Writer:
    """Builds the QDQ graph: integer initializers and DequantizeLinear nodes at the head, Q/DQ pairs after the
    quantized tensors in the body, consumers rewired to the dequantized twins."""

    def __init__(self, m, plan: QdqPlan, qp: QuantParams):
        self.m, self.g, self.plan, self.qp = m, m.graph, plan, qp
        self.new_inits, self.head, self.removed = [], [], set()
        self.rename: dict[str, str] = {}  # per consumer input: float tensor -> its dequantized twin
        self.bias_input: dict[str, str] = {}  # node name -> its dequantized bias

    def _init(self, array, name: str) -> None:
        from onnx import numpy_helper

        self.new_inits.append(numpy_helper.from_array(array, name))

    def _dq(self, stem: str, out: str, **kw):
        from onnx import helper

        return helper.make_node("DequantizeLinear", [f"{stem}_quantized", f"{stem}_scale", f"{stem}_zero_point"],
                                [out], name=f"{stem}_DequantizeLinear", **kw)

    def scalar_qparams(self, t: str) -> tuple[str, str]:
        a = self.qp.activations[self.plan.shared.get(t, t)]
        self._init(np.array(a.scale, np.float32), f"{t}_scale")
        self._init(np.array(a.zero_point, a.dtype), f"{t}_zero_point")
        return f"{t}_scale", f"{t}_zero_point"

    def qdq_nodes(self, t: str) -> list:
        from onnx import helper

        s, z = self.scalar_qparams(t)
        self.rename[t] = f"{t}_dequantized"
        return [helper.make_node("QuantizeLinear", [t, s, z], [f"{t}_quantized"], name=f"{t}_QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{t}_quantized", s, z], [f"{t}_dequantized"],
                                 name=f"{t}_DequantizeLinear")]

    def weights(self) -> None:
        """Per-channel int8 weights, int32 biases on the accumulator's scale, exact scalar constants."""
        from onnx import numpy_helper

        plan, qp = self.plan, self.qp
        for w, (axis, _) in plan.weights.items():
            wq = qp.weights[w]
            self._init(wq.qweight.astype(np.int8), f"{w}_quantized")
            self._init(wq.scale.astype(np.float32), f"{w}_scale")
            self._init(np.zeros_like(wq.scale, np.int8), f"{w}_zero_point")
            self.head.append(self._dq(w, f"{w}_dequantized", axis=axis))
            self.rename[w] = f"{w}_dequantized"
            self.removed.add(w)
        init_by_name = {i.name: i for i in self.g.initializer}
        for node_name, (b, x, w) in plan.biases.items():
            x_src = plan.shared.get(x, x)
            if x_src not in qp.activations:
                continue
            bias = qp.biases.get(node_name)
            if bias is None:
                bias = numpy_helper.to_array(init_by_name[b]).astype(np.float32)
            bq, bs = quantize_bias(bias, qp.activations[x_src].scale, qp.weights[w].scale)
            stem = f"{node_name}_bias"
            self._init(bq, f"{stem}_quantized")
            self._init(bs, f"{stem}_scale")
            self._init(np.zeros_like(bq, np.int32), f"{stem}_zero_point")
            self.head.append(self._dq(stem, f"{stem}_dequantized", axis=0))
            self.bias_input[node_name] = f"{stem}_dequantized"
        for t, value in plan.constants.items():  # scalar operands: exact on a uint8 grid of one step
            self._init(np.array(255 if value > 0 else 0, np.uint8), f"{t}_quantized")
            self._init(np.array(abs(value) / 255 if value else 1.0, np.float32), f"{t}_scale")
            self._init(np.array(255 if value < 0 else 0, np.uint8), f"{t}_zero_point")
            self.head.append(self._dq(t, f"{t}_dequantized"))
            self.rename[t] = f"{t}_dequantized"

    def rescaled_nodes(self, o: str) -> list:
        from onnx import helper

        src, _ = self.plan.rescaled[o]
        a = self.qp.activations[o]
        self._init(np.array(a.scale, np.float32), f"{o}_scale")
        self._init(np.array(a.zero_point, a.dtype), f"{o}_zero_point")
        self.rename[o] = f"{o}_dequantized"
        return [helper.make_node("DequantizeLinear", [f"{src}_quantized", f"{o}_scale", f"{o}_zero_point"],
                                 [f"{o}_dequantized"], name=f"{o}_DequantizeLinear")]

    def _rewire(self, n, quantized: set[str]) -> None:
        plan = self.plan
        for k, i in enumerate(n.input):
            if i in self.rename and n.op_type in ("Shape", "Size") and (i in quantized or i in plan.rescaled):
                # a shape is the same on the uint8 tensor: reading it there spares a DequantizeLinear
                n.input[k] = f"{plan.rescaled[i][0] if i in plan.rescaled else i}_quantized"
            elif i in self.rename:
                n.input[k] = self.rename[i]
        if n.name in self.bias_input:
            n.input[2] = self.bias_input[n.name]

    def _after(self, n, quantized: set[str], graph_out_names: set[str]) -> list:
        """The Q/DQ nodes after ``n``'s quantized outputs."""
        from onnx import helper

        out = []
        for k, o in enumerate(n.output):
            if o in quantized and o in graph_out_names:
                # a quantized graph output (a conv's): the node writes a twin, the DequantizeLinear the output
                s, z = self.scalar_qparams(o)
                n.output[k] = f"{o}_prequant"
                out += [helper.make_node("QuantizeLinear", [n.output[k], s, z], [f"{o}_quantized"],
                                         name=f"{o}_QuantizeLinear"),
                        helper.make_node("DequantizeLinear", [f"{o}_quantized", s, z], [o],
                                         name=f"{o}_DequantizeLinear")]
            elif o in quantized:
                out += self.qdq_nodes(o)
        return out

    def body(self) -> list:
        """The graph's nodes with ReLU/Clip folded, rescales replaced, Q/DQ after every quantized tensor."""
        g, plan = self.g, self.plan
        quantized = set(plan.activations) | set(plan.shared)
        graph_out_names = {o.name for o in g.output}
        for t in plan.activations:
            if t in {i.name for i in g.input}:
                self.head += self.qdq_nodes(t)
        producer = {o: n for n in g.node for o in n.output}
        for n in g.node:  # fold ReLU/Clip: the producer writes the activation's output name directly
            if n.name in plan.folded:
                producer[n.input[0]].output[0] = n.output[0]
        body = []
        for n in g.node:
            if n.name in plan.folded:
                continue
            if n.name in plan.rescale_nodes:
                body += self.rescaled_nodes(n.output[0])
                continue
            self._rewire(n, quantized)
            body.append(n)
            body += self._after(n, quantized, graph_out_names)
        return body

    def keep_float_layers_float(self, nodes: list) -> list:
        """ONNX Runtime quantizes a float Conv/ConvTranspose/Gemm whose input comes from a per-tensor
        DequantizeLinear by itself (its WeightBiasQuantization pass: symmetric *per-tensor* int8 weights), so a layer
        kept in float on purpose would run as a badly quantized one (EfficientNet-Lite0 with its first depthwise
        conv kept float: output SQNR 18.7 dB as written, 7.4 dB as ONNX Runtime ran it). Such a layer reads its own
        DequantizeLinear instead, per channel (axis 1) with every channel on the same scale: the same values, a
        pattern the pass leaves alone."""
        from onnx import helper, numpy_helper

        arrays = {i.name: i for i in self.new_inits}
        weights = {i.name: i for i in self.g.initializer}
        producer = {o: n for n in nodes for o in n.output}
        twins: dict[str, str] = {}
        out = []
        for n in nodes:
            if n.op_type in ("Conv", "ConvTranspose", "Gemm") and len(n.input) > 1 and n.input[1] in weights:
                dq = producer.get(n.input[0])
                w = weights[n.input[1]].dims
                if dq is not None and dq.op_type == "DequantizeLinear" and len(dq.input) == 3 \
                        and dq.input[1] in arrays and not arrays[dq.input[1]].dims:
                    if n.op_type == "Gemm":
                        channels = w[1] if _attr(n, "transB", 0) else w[0]
                    elif n.op_type == "Conv":
                        channels = w[1] * _attr(n, "group", 1)
                    else:
                        channels = w[0]
                    key = f"{dq.output[0]}_per_channel"
                    if dq.output[0] not in twins:  # one twin per tensor, however many float layers read it
                        scale = numpy_helper.to_array(arrays[dq.input[1]])
                        zp = numpy_helper.to_array(arrays[dq.input[2]])
                        self._init(np.full(channels, scale, scale.dtype), f"{key}_scale")
                        self._init(np.full(channels, zp, zp.dtype), f"{key}_zero_point")
                        out.append(helper.make_node("DequantizeLinear", [dq.input[0], f"{key}_scale",
                                                                         f"{key}_zero_point"], [key],
                                                    name=f"{key}_DequantizeLinear", axis=1))
                        twins[dq.output[0]] = key
                    n.input[0] = twins[dq.output[0]]
            out.append(n)
        return out

    def float_max_pools_stay_float(self, nodes: list) -> list:
        """A MaxPool on a float tensor (after a float stem: conv -> ReLU -> MaxPool) whose output is quantized: ONNX
        Runtime moves that QuantizeLinear up before the MaxPool (its QDQ propagation), and its uint8 MaxPool in NCHW
        took 3.4 ms where the float one takes 0.3 (ShuffleNetV2's stem; SqueezeNet's float-stem file ran at 12.1 ms
        against 3.5 ms without it, docs/quantization.md). Where the MaxPool's input is a ReLU's output, a ReLU after
        the MaxPool (exact there: nothing is negative) stops the propagation; the runtime drops it later."""
        from onnx import helper

        producer = {o: n for n in nodes for o in n.output}
        readers = consumer_map(nodes)
        out = []
        for n in nodes:
            out.append(n)
            src = producer.get(n.input[0]) if n.op_type == "MaxPool" else None
            if src is None or src.op_type != "Relu" or len(n.output) != 1 or \
                    not any(r.op_type == "QuantizeLinear" for r in readers[n.output[0]]):
                continue
            kept = f"{n.output[0]}_float"
            for r in readers[n.output[0]]:
                r.input[:] = [kept if i == n.output[0] else i for i in r.input]
            out.append(helper.make_node("Relu", [n.output[0]], [kept], name=f"{n.name or n.output[0]}_keeps_float"))
        return out

    def finish(self, nodes: list) -> None:
        """Drop unread Q/DQ nodes (a quantized tensor read only through rescaled DequantizeLinears leaves its own
        DequantizeLinear unread, and a dangling one makes ONNX Runtime transpose layouts for it); set the nodes
        and the initializers still read."""
        g = self.g
        outputs = {o.name for o in g.output}
        while True:
            read = {i for n in nodes for i in n.input} | outputs
            dead = {id(n) for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                    and not any(o in read for o in n.output)}
            if not dead:
                break
            nodes = [n for n in nodes if id(n) not in dead]
        del g.node[:]
        g.node.extend(nodes)
        still_used = {i for n in g.node for i in n.input}
        keep = [i for i in g.initializer if i.name not in self.removed and i.name in still_used]
        del g.initializer[:]
        g.initializer.extend(keep + self.new_inits)
        del g.value_info[:]


def write_qdq(model, plan: QdqPlan, qp: QuantParams, path: str | Path) -> Path:
    """Write the QDQ ONNX file for ``model`` (FP32, BN folded) from ``plan`` and ``qp``, atomically."""
    import onnx

    from ..storage import atomic_write

    qp, touched = fit_biases(model, plan, with_rescaled(plan, qp))
    if touched:
        import warnings

        warnings.warn(f"{len(touched)} layer(s) have channels with near-zero weights and a bias too large for an "
                      f"int32 accumulator at the floor weight scale; their weight scale was raised to keep the "
                      f"bias exact: {', '.join(touched[:5])}{' ...' if len(touched) > 5 else ''}", stacklevel=2)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    w = _Writer(m, plan, qp)
    w.weights()
    body = w.body()
    nodes = w.keep_float_layers_float(w.head + body)
    w.finish(w.float_max_pools_stay_float(nodes) if plan.target == "onnxruntime" else nodes)

    def _w(tmp: str) -> None:
        onnx.save(m, tmp)
        onnx.checker.check_model(tmp)
    return atomic_write(path, _w)
