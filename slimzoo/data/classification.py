"""Classification datasets: the PaddleX list format and the one-folder-per-class layout.

List format (PaddleX / ImageNet lists)::

    root/labels.txt         one class name a line, line i is class id i
    root/train_list.txt     ``relative/path.jpg label_id`` per line
    root/val_list.txt

Folder format: ``root/train/<class>/*.jpg`` and ``root/val/<class>/*.jpg``.
Images are read from disk on demand (streamed through a DataLoader), never held in memory.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from .images import SampleDataset, entry_path, is_absolute_list, load_rgb, read_labels_txt

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_IMG_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def parse_list_file(list_path: Path, root: Path, num_classes: int) -> list[Sample]:
    """Parse ``relative/path label_id`` lines; each error names the file and line."""
    if not list_path.is_file():
        raise DataError(f"{list_path}: list file not found")
    rows = []
    for i, raw in enumerate(list_path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{list_path}:{i}: expected 'relative/path label_id', got {raw!r}")
        rows.append((i, *parts))
    absolute = is_absolute_list(rel for _, rel, _ in rows)
    samples = []
    for i, rel, lab in rows:
        try:
            label = int(lab)
        except ValueError:
            raise DataError(f"{list_path}:{i}: label {lab!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise DataError(f"{list_path}:{i}: class id {label} out of range [0, {num_classes}) "
                            f"(labels.txt has {num_classes} classes)")
        samples.append(Sample(entry_path(root, rel, f"{list_path}:{i}", absolute), label))
    if not samples:
        raise DataError(f"{list_path}: no samples")
    return samples


def scan_folder(split_dir: Path, classes: list[str] | None = None) -> tuple[list[Sample], list[str]]:
    """Samples of a one-folder-per-class split; classes are the sorted folder names."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    classes = classes or found
    unknown = set(found) - set(classes)
    if unknown:
        raise DataError(f"{split_dir}: class folders {sorted(unknown)} are not among the training classes")
    index = {c: i for i, c in enumerate(classes)}
    samples = [Sample(p, index[d]) for d in found for p in sorted((split_dir / d).iterdir())
               if p.suffix.lower() in _IMG_EXT]
    if not samples:
        raise DataError(f"{split_dir}: no images found (expected {split_dir}/<class>/*.jpg)")
    return samples, classes


class ClassificationDataset(SampleDataset):
    """Image classification samples read from disk; ``transform`` maps a PIL image to a tensor."""

    def __getitem__(self, i: int):
        s = self.samples[i]
        img = load_rgb(s.path)
        return (self.transform(img) if self.transform else img), s.label


def detect_format(root: str | Path) -> str:
    """'list' if ``root`` holds train_list.txt, 'folder' if it holds train/ and val/ folders."""
    root = Path(root)
    if (root / "train_list.txt").is_file() or (root / "val_list.txt").is_file():
        return "list"
    if (root / "train").is_dir() or (root / "val").is_dir():
        return "folder"
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    raise DataError(f"{root}: not a classification dataset: expected labels.txt + train_list.txt/"
                    "val_list.txt (list format) or train/<class>/ and val/<class>/ folders")


def load_split(root: str | Path, split: str, transform: Callable | None = None) -> ClassificationDataset:
    """The ``train`` or ``val`` split of a dataset in either format."""
    root = Path(root)
    if detect_format(root) == "list":
        classes = read_labels_txt(root / "labels.txt")
        samples = parse_list_file(root / f"{split}_list.txt", root, len(classes))
    else:
        classes = None
        if split != "train" and (root / "train").is_dir():
            classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
        samples, classes = scan_folder(root / split, classes)
    return ClassificationDataset(samples, classes, transform)


def train_transform(size: int):
    """Light augmentation: random resized crop (70-100% of the area) and horizontal flip."""
    from torchvision.transforms import v2 as T

    return T.Compose([T.ToImage(), T.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
                      T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def eval_transform(size: int, crop_ratio: float = 0.875):
    """Resize the short side to ``size / crop_ratio`` and centre-crop ``size`` (the ImageNet protocol)."""
    from torchvision.transforms import v2 as T

    return T.Compose([T.ToImage(), T.Resize(round(size / crop_ratio), antialias=True), T.CenterCrop(size),
                      T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
