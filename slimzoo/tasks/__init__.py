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
