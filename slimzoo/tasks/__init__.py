"""Tasks supply what the task-agnostic algorithms need: data, loss, metric and evaluation."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ._base import Task

__all__ = ["Task", "check_model_fits", "get_task", "task_of_folder"]


def get_task(name: str, **kwargs) -> Task:
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


def task_of_folder(root: Path) -> str:
    """``detection``, ``segmentation`` or ``classification``, from a dataset folder's layout."""
    root = Path(root)
    if (root / "annotations").is_dir() or (root / "Annotations").is_dir():
        return "detection"
    if (root / "leftImg8bit").is_dir():
        return "segmentation"
    for name in ("train_list.txt", "val_list.txt"):
        f = root / name
        if f.is_file():
            with f.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    parts = line.split()
                    if len(parts) == 2 and not parts[0].startswith("#"):
                        return "segmentation" if not parts[1].lstrip("-").isdigit() else "classification"
    return "classification"
