"""slimzoo: compress PyTorch vision models (INT8 quantization, structured pruning) and prove it.

``import slimzoo`` stays light: torch loads on first use of the model API, and
onnxruntime only inside the functions that run ONNX files.

    result = slimzoo.quantize(model_or_onnx_path, data, transform_fn=lambda b: b[0])   # INT8 QDQ ONNX
    pruned = slimzoo.prune(model, example_inputs, slimzoo.PruneConfig(flops_reduction=0.5, method="uniform"))
    qat = slimzoo.prepare_qat(model, data); ...your training loop...; slimzoo.convert(qat, "int8.onnx")
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["PTQConfig", "PruneConfig", "QATConfig", "QuantResult", "__version__", "convert", "create_model",
           "list_models", "prepare_qat", "prune", "quantize", "quantize_with_accuracy_control"]

# name -> (module, attribute); imported on first use so that `import slimzoo` loads neither torch nor onnxruntime
_LAZY = {"quantize": (".api", "quantize"), "quantize_with_accuracy_control": (".api", "quantize_with_accuracy_control"),
         "prepare_qat": (".api", "prepare_qat"), "convert": (".api", "convert"), "QuantResult": (".api", "QuantResult"),
         "PTQConfig": (".quant.ptq", "PTQConfig"), "QATConfig": (".quant.qat", "QATConfig"),
         "PruneConfig": (".prune", "PruneConfig"), "prune": (".prune", None)}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'slimzoo' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module, __name__)
    return mod if attr is None else getattr(mod, attr)  # slimzoo.prune: the package, callable as prune()


def create_model(name: str, **kwargs):
    """Build a model by name: a registered one (``create_model("mobilenet_v1", num_classes=10)``), or
    ``torchvision:NAME``, ``timm:NAME``, ``package.module:factory`` (see :func:`slimzoo.models.resolve_model`)."""
    from .models import create_model as _create

    return _create(name, **kwargs)


def list_models(pattern: str = "*", **kwargs) -> list[str]:
    """Names of registered models matching a glob pattern."""
    from .models import list_models as _list

    return _list(pattern, **kwargs)
