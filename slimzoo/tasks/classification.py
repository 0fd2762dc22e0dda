"""Image classification: data loaders, cross-entropy loss and Top-1/Top-5 evaluation."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import classification as cls_data
from ._base import DatasetTask


@dataclass
class ClassificationTask(DatasetTask):
    """A classification dataset at one input size; ``evaluate`` takes any predictor."""

    data_root: str | Path
    image_size: int = 224
    batch_size: int = 64
    num_workers: int | None = None  # None: 0 on machines with 2 or fewer CPUs, else up to 4
    label_smoothing: float = 0.1
    skip_bad_samples: bool = False
    name: str = field(default="classification", init=False)
    metric: str = field(default="top1", init=False)

    def __post_init__(self):
        self.data_root = Path(self.data_root)
        self._val = None

    def train_dataset(self, augment: bool = True):
        tf = cls_data.train_transform(self.image_size) if augment else cls_data.eval_transform(self.image_size)
        return cls_data.load_split(self.data_root, "train", tf)

    def val_dataset(self):
        if self._val is None:
            self._val = cls_data.load_split(self.data_root, "val", cls_data.eval_transform(self.image_size))
        return self._val

    def loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    @torch.no_grad()
    def evaluate(self, predict: Callable[[torch.Tensor], torch.Tensor], *, limit: int | None = None,
                 progress: bool = False) -> dict:
        """Top-1 and Top-5 accuracy (percent) of ``predict`` over the validation set."""
        from tqdm import tqdm

        correct1 = correct5 = total = 0
        bar = tqdm(self.val_loader(limit), desc="eval", disable=None if progress else True, leave=False)
        for images, targets in bar:
            logits = predict(images)
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top == targets[:, None]
            correct1 += hit[:, 0].sum().item()
            correct5 += hit.any(dim=1).sum().item()
            total += targets.numel()
        from .. import distributed

        correct1, correct5, total = distributed.all_reduce_sum(torch.tensor([correct1, correct5, total])).tolist()
        return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "num_images": total,
                **self.skipped(limit, total)}
