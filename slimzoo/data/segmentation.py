"""Segmentation datasets: the PaddleSeg list format and the Cityscapes folder layout.

PaddleSeg list format::

    root/labels.txt                       one class name a line (line i is class id i)
    root/{train,val}_list.txt             ``images/x.png labels/x.png`` per line

Cityscapes layout::

    root/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    root/gtFine/{train,val}/<city>/<name>_gtFine_labelTrainIds.png   (19 train ids, 255 = ignore)

with class names from ``root/labels.txt`` if present, else Cityscapes' 19 training classes.

Labels are single-channel PNGs of class ids; 255 means "ignore". Images are read from disk on
demand; a label of the wrong size, mode or values raises DataError naming the file.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import UnidentifiedImageError

from ..errors import DataError
from .classification import IMAGENET_MEAN, IMAGENET_STD
from .images import SampleDataset, entry_path, is_absolute_list, load_rgb, open_image, read_labels_txt

IGNORE_INDEX = 255
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")


@dataclass
class SegSample:
    image: Path
    label: Path


def detect_format(root: str | Path) -> str:
    """``paddleseg`` if the root has list files, ``cityscapes`` if it has ``leftImg8bit/``."""
    root = Path(root)
    if (root / "train_list.txt").is_file() or (root / "val_list.txt").is_file():
        return "paddleseg"
    if (root / "leftImg8bit").is_dir():
        return "cityscapes"
    raise DataError(f"{root}: not a segmentation dataset (expected train_list.txt/val_list.txt with labels.txt, "
                    "or the Cityscapes layout leftImg8bit/ + gtFine/)")


def load_segmentation(root: str | Path, split: str, fmt: str | None = None) -> tuple[list[SegSample], list[str]]:
    """Samples and class names of one split."""
    root = Path(root)
    fmt = fmt or detect_format(root)
    if fmt == "paddleseg":
        classes = read_labels_txt(root / "labels.txt")
        list_file = root / f"{split}_list.txt"
        if not list_file.is_file():
            raise DataError(f"{list_file}: list file not found")
        rows = []
        for i, raw in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{list_file}:{i}: expected 'images/x.png labels/x.png', got {raw!r}")
            rows.append((i, parts))
        absolute = is_absolute_list(p for _, parts in rows for p in parts)
        samples = [SegSample(*(entry_path(root, p, f"{list_file}:{i}", absolute) for p in parts)) for i, parts in rows]
    elif fmt == "cityscapes":
        classes = read_labels_txt(root / "labels.txt") if (root / "labels.txt").is_file() else list(CITYSCAPES_CLASSES)
        img_dir = root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise DataError(f"{img_dir}: folder not found")
        samples = []
        for p in sorted(img_dir.rglob("*_leftImg8bit.png")):
            rel = p.relative_to(img_dir)
            lab = root / "gtFine" / split / rel.parent / p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
            samples.append(SegSample(p, lab))
    else:
        raise DataError(f"{root}: unknown segmentation format {fmt!r}; known: paddleseg, cityscapes")
    if not samples:
        raise DataError(f"{root}: split {split!r} has no images")
    return samples, classes


def load_label(path: Path, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    """A label PNG as an HxW uint8 array, checked: single channel, ``size`` (w, h), values < C or 255."""
    try:
        with open_image(path, "label") as im:
            im.load()
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: label must be a single-channel PNG of class ids, got mode {im.mode}")
            if im.size != size:
                raise DataError(f"{path}: label is {im.size[0]}x{im.size[1]} but its image is {size[0]}x{size[1]}")
            lab = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode label (corrupt or truncated?): {e}") from None
    bad = np.unique(lab[(lab >= num_classes) & (lab != IGNORE_INDEX)])
    if len(bad):
        raise DataError(f"{path}: class ids {bad[:8].tolist()} out of range (labels.txt has {num_classes} classes; "
                        f"255 = ignore)")
    return lab.astype(np.uint8)


class TrainTransform:
    """Joint augmentation: random scale, random crop (padded with ignore), horizontal flip, colour jitter."""

    def __init__(self, crop: int | tuple[int, int], scale: tuple[float, float] = (0.75, 1.5)):
        from torchvision.transforms import v2

        self.crop = (crop, crop) if isinstance(crop, int) else tuple(crop)
        self.scale = scale
        self.colour = v2.ColorJitter(0.3, 0.3, 0.3, 0.03)
        self.norm = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        h, w = image.shape[-2:]
        s = random.uniform(*self.scale)
        size = [max(1, round(h * s)), max(1, round(w * s))]
        image = F.resize(image, size, antialias=True)
        label = F.resize(label[None], size, interpolation=InterpolationMode.NEAREST)[0]
        ch, cw = self.crop
        ph, pw = max(0, ch - size[0]), max(0, cw - size[1])
        if ph or pw:
            image = F.pad(image, [0, 0, pw, ph], fill=0)
            label = F.pad(label[None], [0, 0, pw, ph], fill=IGNORE_INDEX)[0]
        top = random.randint(0, image.shape[-2] - ch)
        left = random.randint(0, image.shape[-1] - cw)
        image, label = image[:, top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
        if random.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        image = self.colour(image)
        return self.norm(F.to_dtype(image, torch.float32, scale=True)), label


class EvalTransform:
    """Optional resize of the image to ``size`` (h, w); the label keeps its resolution (metrics are computed there)."""

    def __init__(self, size: tuple[int, int] | None = None):
        from torchvision.transforms import v2

        self.size = size
        self.norm = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __call__(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms.v2 import functional as F

        if self.size is not None:
            image = F.resize(image, list(self.size), antialias=True)
        return self.norm(F.to_dtype(image, torch.float32, scale=True)), label


class SegmentationDataset(SampleDataset):
    """(image, label) pairs streamed from disk; label is ``int64 [H, W]`` with 255 = ignore."""

    def __getitem__(self, i: int):
        from torchvision.transforms.v2 import functional as F

        s = self.samples[i]
        img = load_rgb(s.image)
        label = torch.from_numpy(load_label(s.label, len(self.classes), img.size)).long()
        image = F.pil_to_tensor(img)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label


def collate(batch):
    """Stack images and labels; different sizes are an error that says how to fix it."""
    images, labels = zip(*batch, strict=True)
    if len({tuple(x.shape) for x in images}) > 1 or len({tuple(y.shape) for y in labels}) > 1:
        raise DataError("images of one batch differ in size: set an evaluation size (--eval-size HxW) "
                        "or use batch size 1")
    return torch.stack(images), torch.stack(labels)
