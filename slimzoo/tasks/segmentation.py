"""Semantic segmentation: list/Cityscapes loaders, cross-entropy (ignore 255) and mIoU from a confusion matrix."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import segmentation as seg_data
from ._base import DatasetTask


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[C, C]`` counts (rows: ground truth, columns: prediction) over pixels whose target is not ignored."""
    keep = target != seg_data.IGNORE_INDEX
    idx = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Per-class IoU (NaN for a class absent from both ground truth and predictions)."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


@dataclass
class SegmentationTask(DatasetTask):
    """A segmentation dataset: training on ``image_size`` crops, evaluation on whole images
    (at their own size, or resized to ``eval_size`` (h, w) with predictions upsampled back)."""

    data_root: str | Path
    image_size: int = 512
    batch_size: int = 8
    num_workers: int | None = None  # None: 0 on machines with 2 or fewer CPUs, else up to 4
    format: str | None = None
    eval_size: tuple[int, int] | None = None
    aux_weight: float = 0.0
    skip_bad_samples: bool = False
    name: str = field(default="segmentation", init=False)
    metric: str = field(default="miou", init=False)
    collate_fn = staticmethod(seg_data.collate)

    def __post_init__(self):
        self.data_root = Path(self.data_root)
        self._val = None
        self.format = self.format or seg_data.detect_format(self.data_root)
        if self.eval_size is not None:
            self.eval_size = tuple(int(v) for v in self.eval_size)

    def _split(self, split: str, transform):
        samples, classes = seg_data.load_segmentation(self.data_root, split, self.format)
        return seg_data.SegmentationDataset(samples, classes, transform)

    def train_dataset(self, augment: bool = True):
        return self._split("train", seg_data.TrainTransform(self.image_size) if augment
                           else seg_data.EvalTransform(self.eval_size))

    def val_dataset(self):
        if self._val is None:
            self._val = self._split("val", seg_data.EvalTransform(self.eval_size))
        return self._val

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        h, w = self.eval_size or self.val_dataset()[0][0].shape[-2:]
        return torch.randn(batch, 3, h, w)

    def loss_fn(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, (list, tuple)):  # (main, auxiliary) logits
            main, aux = outputs[0], outputs[1:]
            loss = F.cross_entropy(main, targets, ignore_index=seg_data.IGNORE_INDEX)
            for a in aux:
                a = F.interpolate(a, size=targets.shape[-2:], mode="bilinear", align_corners=False)
                loss = loss + self.aux_weight * F.cross_entropy(a, targets, ignore_index=seg_data.IGNORE_INDEX)
            return loss
        return F.cross_entropy(outputs, targets, ignore_index=seg_data.IGNORE_INDEX)

    @torch.no_grad()
    def evaluate(self, predict: Callable[[torch.Tensor], torch.Tensor], *, limit: int | None = None,
                 progress: bool = False) -> dict:
        """mIoU, per-class IoU and pixel accuracy (percent), from one confusion matrix over the validation set."""
        from tqdm import tqdm

        C = self.num_classes
        cm = torch.zeros(C, C, dtype=torch.long)
        n = 0
        bar = tqdm(self.val_loader(limit), desc="eval", disable=None if progress else True, leave=False)
        for images, labels in bar:
            logits = torch.as_tensor(predict(images))
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
            cm += confusion_matrix(logits.argmax(1), labels, C)
            n += labels.shape[0]
        from .. import distributed

        cm = distributed.all_reduce_sum(cm)
        n = int(distributed.all_reduce_sum(torch.tensor(n)))
        iou = iou_from_confusion(cm)
        valid = ~torch.isnan(iou)
        return {"miou": 100 * float(iou[valid].mean()) if valid.any() else 0.0,
                "pixel_acc": 100 * float(cm.diag().sum() / cm.sum().clamp(min=1)),
                "per_class_iou": {c: (None if torch.isnan(v) else round(100 * float(v), 3))
                                  for c, v in zip(self.classes, iou, strict=True)},
                "num_images": n, **self.skipped(limit, n)}
