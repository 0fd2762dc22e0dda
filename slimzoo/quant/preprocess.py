"""Graph clean-up before quantization: patterns an FP32 ONNX file may hold that would keep a conv in float.

- a zero ``Pad`` right before a ``Conv`` (TF-style "SAME" padding, e.g. EfficientNet-Lite) is merged into
  the conv's own ``pads``, so the conv's input can be quantized where the conv reads it;
- an ``Identity`` of an initializer (the exporter writes one where two layers have identical weights, e.g. the
  zero-initialised last layer of every residual block of an untrained timm model) becomes an initializer of its
  own, so each layer has constant weights to quantize (and to round or correct on its own);
- a weight computed in the graph from constants only (weight standardization: timm's BiT ResNetV2 and NF-Nets
  standardize every conv's weight with a BatchNormalization at run time) becomes an initializer holding its value,
  so the layer can be quantized at all (53 of BiT-ResNetV2-50's 54 convs stayed in float before);
- a ``ReduceMean`` over the spatial axes becomes the ``GlobalAveragePool`` it is, which has an integer kernel;
- a ``BatchNormalization`` no conv absorbed becomes the 1x1 depthwise conv it is (for ONNX Runtime), which has one.
"""
from __future__ import annotations

import numpy as np

from .qdq import _attr, _const_value, consumer_map


def _const_through(model, name: str, depth: int = 32):
    """The value of ``name`` if it is a constant or computed from constants only (the shape arithmetic the
    exporter writes for a dynamic-size ``Pad``), evaluated node by node; None otherwise."""
    value = _const_value(model, name)
    if value is not None or depth == 0 or not name:
        return value
    producer = next((n for n in model.graph.node if name in n.output), None)
    if producer is None or producer.op_type in ("Shape", "Size"):
        return None  # depends on the input's size
    inputs = []
    for i in producer.input:
        v = _const_through(model, i, depth - 1) if i else None
        if i and v is None:
            return None
        inputs.append(v)
    from onnx.reference import ReferenceEvaluator

    try:
        outs = ReferenceEvaluator(producer).run(None, {i: v for i, v in zip(producer.input, inputs) if i})
    except Exception:  # noqa: BLE001 - an op the reference evaluator lacks: treat as not constant
        return None
    return outs[list(producer.output).index(name)]


def _zero_spatial_pads(model, pad) -> list[int] | None:
    """The spatial pads of a constant-zero NCHW ``Pad`` node as [top, left, bottom, right], or None."""
    if (_attr(pad, "mode", b"constant") or b"constant") not in (b"constant", "constant"):
        return None
    pads = _const_through(model, pad.input[1]) if len(pad.input) > 1 and pad.input[1] else _attr(pad, "pads")
    value = _const_through(model, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
    if pads is None or value is None or float(np.asarray(value)) != 0.0 or len(pad.input) > 3 and pad.input[3]:
        return None
    pads = [int(p) for p in np.asarray(pads).ravel()]
    if len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
        return None  # pads on batch or channels, or a crop
    return [pads[2], pads[3], pads[6], pads[7]]


def fuse_pad_into_conv(model) -> int:
    """Merge zero ``Pad`` nodes into the ``Conv`` nodes they feed (in place); returns how many were merged."""
    g = model.graph
    consumers = consumer_map(g)
    outputs = {o.name for o in g.output}
    drop = []
    for pad in g.node:
        if pad.op_type != "Pad" or pad.output[0] in outputs:
            continue
        users = consumers[pad.output[0]]
        if not users or any(u.op_type != "Conv" or u.input[0] != pad.output[0] for u in users):
            continue
        extra = _zero_spatial_pads(model, pad)
        if extra is None or any(_attr(u, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") for u in users):
            continue
        for u in users:
            own = list(_attr(u, "pads", [0, 0, 0, 0]))
            if len(own) != 4:
                break
            for a in list(u.attribute):
                if a.name == "pads":
                    u.attribute.remove(a)
            from onnx import helper

            u.attribute.append(helper.make_attribute("pads", [o + e for o, e in zip(own, extra)]))
            u.input[0] = pad.input[0]
        else:
            drop.append(pad)
    for pad in drop:
        g.node.remove(pad)
    return len(drop)


def decompose_hard_activations(model) -> int:
    """Rewrite ``HardSwish`` and ``HardSigmoid`` (in place) into ops that have integer kernels; returns how many.

    ``HardSwish(x) = x * Clip(x + 3, 0, 6) / 6`` and ``HardSigmoid(x) = Clip(x + b/a, 0, 1/a) * a``: once
    quantized, ``x + c`` runs as QLinearAdd (the Clip is the uint8 range of its output), the product as
    QLinearMul, and the final scaling by a constant costs nothing (it is folded into the next
    DequantizeLinear's scale, see ``qdq.plan_qdq``). ONNX Runtime has no integer HardSwish, so left whole it
    runs in float between a DequantizeLinear and a QuantizeLinear: four passes over float data instead of two
    over bytes. The rewrite is exact in float.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    new_nodes, new_inits, done = [], [], 0

    def const(name: str, value: float) -> str:
        new_inits.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    for n in g.node:
        if n.op_type == "HardSwish":
            shift, hi, scale = 3.0, 6.0, 1.0 / 6.0
        elif n.op_type == "HardSigmoid":
            alpha, beta = float(_attr(n, "alpha", 0.2)), float(_attr(n, "beta", 0.5))
            if alpha <= 0:
                new_nodes.append(n)
                continue
            shift, hi, scale = beta / alpha, 1.0 / alpha, alpha
        else:
            new_nodes.append(n)
            continue
        x, y = n.input[0], n.output[0]
        stem = n.name or y
        c_shift, c_zero, c_hi = (const(f"{stem}_shift", shift), const(f"{stem}_zero", 0.0),
                                 const(f"{stem}_high", hi))
        new_nodes += [helper.make_node("Add", [x, c_shift], [f"{stem}_shifted"], name=f"{stem}_add"),
                      helper.make_node("Clip", [f"{stem}_shifted", c_zero, c_hi], [f"{stem}_clipped"],
                                       name=f"{stem}_clip")]
        gated = f"{stem}_clipped"
        if n.op_type == "HardSwish":
            new_nodes.append(helper.make_node("Mul", [x, gated], [f"{stem}_product"], name=f"{stem}_mul"))
            gated = f"{stem}_product"
        new_nodes.append(helper.make_node("Mul", [gated, const(f"{stem}_scale", scale)], [y], name=f"{stem}_scale"))
        done += 1
    if done:
        del g.node[:]
        g.node.extend(new_nodes)
        g.initializer.extend(new_inits)
    return done


def materialize_identity_initializers(model) -> int:
    """Replace each ``Identity`` whose input is an initializer by a copy of that initializer under the Identity's
    output name; returns how many."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    done = []
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in graph_outputs:
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[n.input[0]]), n.output[0]))
            done.append(n)
    for n in done:
        g.node.remove(n)
    return len(done)


def tensor_shapes(model) -> dict[str, list] | None:
    """Each tensor's shape (None for a dimension not known) by ONNX shape inference, initializers included; None
    where inference fails (no shapes, no rewrite)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - a graph onnx cannot infer
        return None
    out = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
           for v in [*inferred.value_info, *inferred.input, *inferred.output] if v.type.tensor_type.HasField("shape")}
    out.update({i.name: list(i.dims) for i in model.graph.initializer})
    return out


def _ranks(model) -> dict[str, int] | None:
    shapes = tensor_shapes(model)
    return None if shapes is None else {k: len(v) for k, v in shapes.items()}


def reduce_means_to_global_pools(model) -> int:
    """Rewrite each ``ReduceMean`` over the two spatial axes of a 4-D tensor (``x.mean((2, 3))``: the squeeze of
    timm's squeeze-excite blocks, the pooling of every network ``torch.onnx.export``'s default exporter writes) into
    ``GlobalAveragePool`` (followed by a ``Squeeze`` without ``keepdims``), the same function with an integer kernel
    (QLinearGlobalAveragePool); ReduceMean has none and runs in float between DequantizeLinear and QuantizeLinear.
    Returns how many."""
    from onnx import helper, numpy_helper

    g = model.graph
    rank = _ranks(model) if any(n.op_type == "ReduceMean" for n in g.node) else None
    if rank is None:
        return 0
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    new_nodes, done = [], 0
    for n in g.node:
        if n.op_type == "ReduceMean" and rank.get(n.input[0]) == 4:
            axes = _attr(n, "axes")
            if axes is None and len(n.input) > 1 and n.input[1]:
                value = _const_value(model, n.input[1])
                axes = None if value is None else value.tolist()
            if axes is not None and sorted(a % 4 for a in axes) == [2, 3]:
                stem = n.name or n.output[0]
                if _attr(n, "keepdims", 1):
                    new_nodes.append(helper.make_node("GlobalAveragePool", [n.input[0]], [n.output[0]], name=stem))
                else:
                    new_nodes.append(helper.make_node("GlobalAveragePool", [n.input[0]], [f"{stem}_pooled"],
                                                      name=stem))
                    if opset >= 13:  # Squeeze takes its axes as an input since opset 13
                        axes_name = f"{stem}_squeeze_axes"
                        g.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), axes_name))
                        new_nodes.append(helper.make_node("Squeeze", [f"{stem}_pooled", axes_name], [n.output[0]],
                                                          name=f"{stem}_squeeze"))
                    else:
                        new_nodes.append(helper.make_node("Squeeze", [f"{stem}_pooled"], [n.output[0]],
                                                          name=f"{stem}_squeeze", axes=[2, 3]))
                done += 1
                continue
        new_nodes.append(n)
    if done:
        del g.node[:]
        g.node.extend(new_nodes)
    return done


def batchnorms_to_depthwise(model) -> int:
    """Rewrite each inference-mode ``BatchNormalization`` of a 4-D activation that no conv before it absorbed (a
    pre-activation BatchNorm after a Concat in DenseNet, RepGhost's ``fusion_bn`` on a branch that also feeds
    another layer) into the same per-channel affine map as a 1x1 depthwise ``Conv`` (weight ``gamma / sqrt(var +
    eps)``, bias ``beta - mean * weight``): exact in float, and it then runs as an integer depthwise conv (one
    weight per channel: int8 per channel holds it exactly) instead of in float between DequantizeLinear and
    QuantizeLinear. Returns how many."""
    from onnx import helper, numpy_helper

    g = model.graph
    bns = [n for n in g.node if n.op_type == "BatchNormalization"]
    rank = _ranks(model) if bns else None
    if rank is None:
        return 0
    done = 0
    for n in bns:
        params = [_const_value(model, i) for i in n.input[1:5]]
        if rank.get(n.input[0]) != 4 or any(p is None for p in params) or _attr(n, "training_mode", 0) \
                or any(o for o in n.output[1:]) or _const_value(model, n.input[0]) is not None:
            continue
        gamma, beta, mean, var = (np.asarray(p, np.float64).ravel() for p in params)
        w = gamma / np.sqrt(var + float(_attr(n, "epsilon", 1e-5)))
        stem = n.name or n.output[0]
        g.initializer.extend([numpy_helper.from_array(w.astype(np.float32).reshape(-1, 1, 1, 1), f"{stem}_dw_weight"),
                              numpy_helper.from_array((beta - mean * w).astype(np.float32), f"{stem}_dw_bias")])
        conv = helper.make_node("Conv", [n.input[0], f"{stem}_dw_weight", f"{stem}_dw_bias"], [n.output[0]],
                                name=stem, group=int(w.size), kernel_shape=[1, 1])
        idx = list(g.node).index(n)
        g.node.remove(n)
        g.node.insert(idx, conv)
        done += 1
    if done:
        from ..export import drop_unread

        drop_unread(g)
    return done


def fold_computed_weights(model) -> int:
    """Replace each weight or bias of a Conv/ConvTranspose/Gemm/MatMul that the graph computes from constants only
    by an initializer of the same name holding its value (computed once, by ONNX's reference evaluator), and drop
    the nodes that computed it; returns how many tensors were folded."""
    from onnx import numpy_helper

    from .qdq import COMPUTE

    g = model.graph
    inits = {i.name for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    graph_outputs = {o.name for o in g.output}
    wanted = []
    for n in g.node:
        if n.op_type in COMPUTE:
            for name in n.input[COMPUTE[n.op_type]:COMPUTE[n.op_type] + 2]:
                p = producers.get(name)
                if name and name not in inits and name not in wanted and p is not None and p.op_type != "Constant" \
                        and len(p.output) == 1 and name not in graph_outputs:
                    wanted.append(name)
    folded = 0
    for name in wanted:
        value = _const_through(model, name)
        if value is None or value.dtype.kind != "f":
            continue
        g.node.remove(producers[name])
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        folded += 1
    if folded:  # the nodes that computed the weights are read by nothing now
        from ..export import drop_unread

        drop_unread(g)
    return folded


def unique_node_names(model) -> int:
    """Give every node a name of its own (the plan and ``keep_fp32`` refer to layers by node name): the default
    ``torch.onnx.export`` exporter leaves the nodes of inlined functions with repeated names (timm's HardSwish in
    EfficientViT). Renamed nodes get ``<name or op type>_<k>``; returns how many."""
    seen, renamed = set(), 0
    taken = {n.name for n in model.graph.node}
    for n in model.graph.node:
        if n.name and n.name not in seen:
            seen.add(n.name)
            continue
        base, k = n.name or n.op_type, 1
        while f"{base}_{k}" in taken or f"{base}_{k}" in seen:
            k += 1
        n.name = f"{base}_{k}"
        seen.add(n.name)
        taken.add(n.name)
        renamed += 1
    return renamed


def preprocess(model, target: str = "onnxruntime"):
    """Apply every clean-up to ``model`` in place; returns a dict of what was done (for reports).

    The hard activations are decomposed for ONNX Runtime only: OpenVINO runs them whole, fused into its convs.
    """
    done = {"renamed_nodes": unique_node_names(model), "identity_weights": materialize_identity_initializers(model),
            "computed_weights": fold_computed_weights(model), "pads_fused": fuse_pad_into_conv(model),
            "reduce_means_pooled": reduce_means_to_global_pools(model)}
    if target == "onnxruntime":
        done["hard_activations_decomposed"] = decompose_hard_activations(model)
        done["batchnorms_as_depthwise"] = batchnorms_to_depthwise(model)
    return done
