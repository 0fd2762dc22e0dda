"""Export to ONNX (opset 17, TorchScript exporter, dynamic batch and spatial size) and BN folding."""
from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path

import torch
from torch import nn

from .storage import atomic_write

OPSET = 17


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every Conv->BatchNorm pair folded into the conv.

    Conv modules keep their qualified names, so their weights keep their names in the ONNX file. A model torch.fx
    cannot trace (control flow on tensor values or shapes, e.g. timm's MobileViT) is returned unfolded: the ONNX
    exporter folds Conv->BatchNorm itself in eval mode, so the exported file is the same.
    """
    from torch.fx.experimental.optimization import fuse

    model = copy.deepcopy(model).eval()
    for m in _fused_attention(model):  # traced below with the branch taken then: take the exportable one
        m.fused_attn = False
    try:  # fuse traces before it changes anything: a model it cannot trace comes back as it was
        return fuse(model, inplace=True)
    except Exception:  # noqa: BLE001 - torch.fx raises TraceError, TypeError, ... on what it cannot trace
        return model


def _fused_attention(model: nn.Module) -> list[nn.Module]:
    """timm's attention blocks set to call ``scaled_dot_product_attention`` (a boolean ``fused_attn``)."""
    return [m for m in model.modules() if getattr(m, "fused_attn", None) is True]


@contextlib.contextmanager
def _plain_attention(model: nn.Module):
    """Send attention down its plain path while exporting: ``nn.MultiheadAttention`` under ``no_grad`` would take
    the fused fast path, whose ``aten::_native_multi_head_attention`` the ONNX exporter cannot write, and timm's
    attention blocks (a boolean ``fused_attn``) call ``scaled_dot_product_attention``, which the TorchScript
    exporter fails on (``is_causal must be bool, not Tensor``); their unfused path is the same function."""
    fused = _fused_attention(model)
    mha = getattr(torch.backends, "mha", None)
    was = mha.get_fastpath_enabled() if mha is not None else None
    if mha is not None:
        mha.set_fastpath_enabled(False)
    for m in fused:
        m.fused_attn = False
    try:
        yield
    finally:
        for m in fused:
            m.fused_attn = True
        if mha is not None:
            mha.set_fastpath_enabled(was)


def export_onnx(model: nn.Module, path: str | Path, example_inputs: torch.Tensor, *,
                opset: int = OPSET, dynamic: bool = True, output_names: list[str] | None = None) -> Path:
    """Write ``model`` as an ONNX file (checked with ``onnx.checker``), atomically.

    Outputs are named ``output``, ``output_1``, ... unless ``output_names`` says otherwise; every one gets a
    dynamic batch dimension. An operator the exporter cannot write is a ConfigError naming it.
    """
    import onnx

    from .errors import ConfigError

    model = model.eval()
    if not output_names:
        with torch.no_grad(), _plain_attention(model):
            out = model(example_inputs)
        n = len(out) if isinstance(out, (tuple, list)) else 1
        output_names = ["output"] + [f"output_{i}" for i in range(1, n)]
    dyn = None
    if dynamic:
        dyn = {"input": {0: "batch", 2: "height", 3: "width"}}
        dyn.update({n: {0: "batch"} for n in output_names})

    def _write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad(), _plain_attention(model):
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(model, (example_inputs,), tmp, opset_version=opset, input_names=["input"],
                                  output_names=output_names, dynamic_axes=dyn, do_constant_folding=True,
                                  dynamo=False)
            except (torch.onnx.errors.OnnxExporterError, RuntimeError, TypeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"{type(model).__name__} cannot be exported to ONNX (opset {opset}): {first}. "
                                  "Replace or wrap the module that uses this operator, or export the file yourself "
                                  "and quantize it with slimzoo.quant.quantize_onnx") from None
        onnx.checker.check_model(tmp)
    return atomic_write(path, _write)
