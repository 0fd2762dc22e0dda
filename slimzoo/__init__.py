"""slimzoo: compress PyTorch vision models (INT8 quantization, structured pruning) and prove it.

``import slimzoo`` stays light: torch loads on first use of the model API, and
onnxruntime only inside the functions that run ONNX files.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "list_models"]


def create_model(name: str, **kwargs):
    """Build a registered model by name, e.g. ``create_model("mobilenet_v1", num_classes=10)``."""
    from .models import create_model as _create

    return _create(name, **kwargs)


def list_models(pattern: str = "*", **kwargs) -> list[str]:
    """Names of registered models matching a glob pattern."""
    from .models import list_models as _list

    return _list(pattern, **kwargs)
