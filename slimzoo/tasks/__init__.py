"""Tasks supply what the task-agnostic algorithms need: data, loss, metric and evaluation."""
from __future__ import annotations

from ..errors import ConfigError


def get_task(name: str, **kwargs):
    """Build a task by name: ``classification``, ``detection`` or ``segmentation``."""
    if name == "classification":
        from .classification import ClassificationTask

        return ClassificationTask(**kwargs)
    if name == "detection":
        from .detection import DetectionTask

        return DetectionTask(**kwargs)
    if name == "segmentation":
        from .segmentation import SegmentationTask

        return SegmentationTask(**kwargs)
    raise ConfigError(f"unknown task {name!r}; known: classification, detection, segmentation")


def check_model_fits(task, predict, what: str = "the model") -> None:
    """Refuse a classifier whose output size is not the dataset's class count (it would score 0 silently).

    ``predict`` maps an image batch to outputs (a PyTorch module, or a slimzoo predictor of an ONNX file).
    Detection and segmentation tasks check their own outputs when decoding.
    """
    if getattr(task, "name", None) != "classification" and type(task).__name__ != "ClassificationTask":
        return
    import torch

    with torch.no_grad():
        out = predict(task.example_inputs())
    out = out[0] if isinstance(out, (tuple, list)) else out
    n = int(out.shape[-1]) if out.ndim >= 2 else int(out.numel())
    if n != task.num_classes:
        raise ConfigError(f"{what} outputs {n} classes but the dataset {task.data_root} has {task.num_classes}; "
                          f"build it with num_classes={task.num_classes} (--num-classes / --model-kwargs) or fine-tune "
                          "a new head first")
