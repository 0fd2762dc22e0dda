"""Image classification: data loaders, cross-entropy loss and Top-1/Top-5 evaluation."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ..data import classification as cls_data


@dataclass
class ClassificationTask:
    """A classification dataset at one input size; ``evaluate`` takes any predictor."""

    data_root: str | Path
    image_size: int = 224
    batch_size: int = 64
    num_workers: int = 1
    label_smoothing: float = 0.1
    skip_bad_samples: bool = False
    name: str = field(default="classification", init=False)
    metric: str = field(default="top1", init=False)

    def __post_init__(self):
        self.data_root = Path(self.data_root)
        self._val = None

    @property
    def classes(self) -> list[str]:
        return self.val_dataset().classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, 3, self.image_size, self.image_size)

    def train_dataset(self, augment: bool = True):
        tf = cls_data.train_transform(self.image_size) if augment else cls_data.eval_transform(self.image_size)
        return cls_data.load_split(self.data_root, "train", tf, self.skip_bad_samples)

    def val_dataset(self):
        if self._val is None:
            self._val = cls_data.load_split(self.data_root, "val", cls_data.eval_transform(self.image_size),
                                            self.skip_bad_samples)
        return self._val

    def _loader(self, ds, shuffle: bool, batch_size: int | None = None, drop_last: bool = False):
        return DataLoader(ds, batch_size=batch_size or self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, persistent_workers=False)

    def train_loader(self, batch_size: int | None = None) -> DataLoader:
        ds = self.train_dataset()
        if ds.classes != self.classes:
            from ..errors import DataError

            raise DataError(f"{self.data_root}: train and val splits have different classes")
        return self._loader(ds, True, batch_size, drop_last=True)

    def val_loader(self, limit: int | None = None) -> DataLoader:
        ds = self.val_dataset()
        if limit is not None and limit < len(ds):
            ds = Subset(ds, range(limit))
        return self._loader(ds, False)

    def calibration_batches(self, num_images: int, batch_size: int = 32) -> Iterator[torch.Tensor]:
        """``num_images`` training images (evaluation transform, fixed spread-out subset) for calibration."""
        ds = self.train_dataset(augment=False)
        step = max(1, len(ds) // max(1, num_images))
        idx = list(range(0, len(ds), step))[:num_images]
        for images, _ in self._loader(Subset(ds, idx), False, batch_size):
            yield images

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
        return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "num_images": total}
