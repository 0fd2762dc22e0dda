"""What every dataset-backed task shares: loaders, the classes check, calibration images, example inputs."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Subset


class DatasetTask:
    """Mixin for tasks with ``train_dataset(augment)``, ``val_dataset()``, ``data_root``, ``image_size``,
    ``batch_size`` and ``num_workers``; ``collate_fn`` batches samples (None: default stacking)."""

    collate_fn = None

    @property
    def classes(self) -> list[str]:
        return self.val_dataset().classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, 3, self.image_size, self.image_size)

    def _loader(self, ds, shuffle: bool, batch_size: int | None = None, drop_last: bool = False) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size or self.batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=self.num_workers, collate_fn=type(self).collate_fn)

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
