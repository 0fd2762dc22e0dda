"""What every dataset-backed task shares: loaders, the classes check, calibration images, example inputs."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Subset, default_collate


@runtime_checkable
class Task(Protocol):
    """What the task-agnostic algorithms (training, PTQ/QAT calibration, pruning sensitivity, the zoo) need from a
    task: its data, its loss, its metric and an evaluation of any predictor (a PyTorch module or an ONNX file in a
    runtime). Classification, detection and segmentation implement it; so can a user's own task."""

    name: str  # "classification", "detection", "segmentation", ...
    metric: str  # the key of evaluate()'s result that the zoo and the sensitivity analysis read
    data_root: Path

    @property
    def classes(self) -> list[str]: ...

    @property
    def num_classes(self) -> int: ...

    def train_loader(self, batch_size: int | None = None) -> DataLoader:
        """Shuffled, augmented (images, targets) batches."""

    def val_loader(self, limit: int | None = None) -> DataLoader: ...

    def calibration_batches(self, num_images: int, batch_size: int = 32, offset: int = 0) -> Iterator[torch.Tensor]:
        """Training images with the evaluation transform, for calibration."""

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        """An input of the model's shape (export, tracing, FLOPs)."""

    def loss_fn(self, outputs, targets) -> torch.Tensor:
        """The training loss of the model's training-mode outputs."""

    def evaluate(self, predict: Callable[[torch.Tensor], torch.Tensor], *, limit: int | None = None,
                 progress: bool = False) -> dict:
        """Metrics (percent) of ``predict`` over the validation set (``limit``: its first images); includes
        ``self.metric`` and ``num_images``."""


class SkipBadSamples(Dataset):
    """Wraps a dataset so that a sample raising DataError (corrupt image, bad label) becomes None;
    :func:`skipping_collate` drops those, and the task reports how many were skipped."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        from ..errors import DataError

        try:
            return self.ds[i]
        except DataError as e:
            import warnings

            warnings.warn(f"skipped: {e}", stacklevel=1)
            return None


class _SkippingCollate:
    def __init__(self, collate):
        self.collate = collate or default_collate

    def __call__(self, batch):
        good = [b for b in batch if b is not None]
        if not good:
            from ..errors import DataError

            raise DataError(f"every sample of a batch of {len(batch)} was bad; check the dataset "
                            "(--skip-bad-samples skips a few bad files, not most of them)")
        return self.collate(good)


class DatasetTask:
    """Mixin for tasks with ``train_dataset(augment)``, ``val_dataset()``, ``data_root``, ``image_size``,
    ``batch_size``, ``num_workers`` and ``skip_bad_samples``; ``collate_fn`` batches samples (None: default
    stacking)."""

    collate_fn = None

    @property
    def classes(self) -> list[str]:
        return self.val_dataset().classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, 3, self.image_size, self.image_size)

    def _loader(self, ds, shuffle: bool, batch_size: int | None = None, drop_last: bool = False,
                shard: bool = True) -> DataLoader:
        """Under torchrun, training loaders read a seeded per-rank shard (reshuffled per epoch by ``fit``) and
        evaluation loaders split the data without padding, so each image is evaluated exactly once;
        ``shard=False``: every rank reads all of ``ds`` (calibration, so every rank finds the same ranges)."""
        from .. import distributed
        from ..data._parallel import default_workers

        collate = type(self).collate_fn
        if getattr(self, "skip_bad_samples", False):
            ds, collate = SkipBadSamples(ds), _SkippingCollate(collate)
        sampler = None
        if shard and distributed.active():
            from torch.utils.data import DistributedSampler

            sampler = (DistributedSampler(ds, shuffle=True, seed=0, drop_last=drop_last) if shuffle
                       else distributed.ShardSampler(len(ds)))
            shuffle = False
        return DataLoader(ds, batch_size=batch_size or self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=default_workers() if self.num_workers is None else self.num_workers,
                          collate_fn=collate, sampler=sampler)

    def skipped(self, limit: int | None, evaluated: int) -> dict:
        """``{"skipped": n}`` when bad validation samples were skipped (counted as those not evaluated), else {}."""
        expected = len(self.val_dataset()) if limit is None else min(limit, len(self.val_dataset()))
        return {"skipped": expected - evaluated} if expected != evaluated else {}

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

    def calibration_batches(self, num_images: int, batch_size: int = 32, offset: int = 0) -> Iterator[torch.Tensor]:
        """``num_images`` training images (evaluation transform, fixed spread-out subset) for calibration;
        ``offset`` shifts the subset by that many images: another draw of the same size, disjoint from the
        first while ``offset`` is below the spacing ``len(train) // num_images`` (benchmarks' calibration draws)."""
        ds = self.train_dataset(augment=False)
        step = max(1, len(ds) // max(1, num_images))
        idx = list(range(offset % step, len(ds), step))[:num_images]
        for images, _ in self._loader(Subset(ds, idx), False, batch_size, shard=False):
            yield images
