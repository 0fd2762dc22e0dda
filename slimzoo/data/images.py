"""Reading images from disk with errors that name the file."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB, fully decoded, or raise DataError naming the file."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image (corrupt or truncated?): {e}") from None


def read_labels_txt(path: str | Path) -> list[str]:
    """Class names from a ``labels.txt`` (one name a line; blank lines are an error)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    names = path.read_text(encoding="utf-8").splitlines()
    while names and not names[-1].strip():
        names.pop()
    for i, n in enumerate(names, 1):
        if not n.strip():
            raise DataError(f"{path}:{i}: empty class name")
    if not names:
        raise DataError(f"{path}: no class names")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: duplicate class names")
    return names


class SampleDataset(Dataset):
    """A list of samples read from disk on demand, their class names and an optional transform
    (each task's dataset adds ``__getitem__``)."""

    def __init__(self, samples: list, classes: list[str], transform: Callable | None = None):
        self.samples, self.classes, self.transform = samples, classes, transform

    def __len__(self) -> int:
        return len(self.samples)
