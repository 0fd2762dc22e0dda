"""Registered models; importing this package registers every builder."""
from . import mobilenet_v1 as _mobilenet_v1  # noqa: F401
from . import torchvision_models as _torchvision_models  # noqa: F401
from . import segmentation as _segmentation  # noqa: F401
from . import yolov3 as _yolov3  # noqa: F401
from ._registry import create_model, list_models, load_backbone, model_task, register_model

__all__ = ["create_model", "list_models", "load_backbone", "model_task", "register_model"]
