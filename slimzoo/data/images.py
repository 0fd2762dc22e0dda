"""Reading images from disk with errors that name the file."""
from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import DataError


# images above this many pixels are refused (a decompression bomb decodes a few kB into gigabytes); the largest
# real photographs are around 100 megapixels
MAX_PIXELS = 178_956_970


def check_regular_file(path: str | Path, what: str = "image") -> None:
    """Only regular files are opened: a FIFO, device or folder in a dataset would block or fail obscurely."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read {what} file ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path}: not a regular file (a folder, FIFO or device); only {what} files are read")


def open_image(path: str | Path, what: str = "image") -> Image.Image:
    """``Image.open`` of a regular file whose header says at most :data:`MAX_PIXELS` pixels (nothing decoded yet)."""
    check_regular_file(path, what)
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: {what} too large to decode safely ({e})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise DataError(f"{path}: {what} is {w}x{h} ({w * h / 1e6:.0f} megapixels), above the limit of "
                        f"{MAX_PIXELS / 1e6:.0f}; resize it (a decompression bomb looks like this)")
    return im


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB, fully decoded, or raise DataError naming the file."""
    try:
        with open_image(path) as im:
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


def synth_settings_match(out: Path, done: Path, settings: dict) -> bool:
    """For the synthetic dataset writers: True when ``out`` already holds a complete dataset (``done`` exists)
    written with ``settings`` (reuse it). A complete dataset written with other settings is refused, naming what
    differs; otherwise ``settings`` are recorded in ``out/synth.json`` and the caller writes the dataset."""
    import json

    from ..errors import ConfigError
    from ..storage import write_json

    marker = out / "synth.json"
    old = None
    if marker.is_file():
        try:
            old = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
    if done.is_file():
        if old is None or old == settings:  # no record: written by an older slimzoo, reused as before
            return True
        diff = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} asked" for k in sorted(settings)
                         if old.get(k) != settings.get(k))
        raise ConfigError(f"{out}: holds a synthetic dataset written with other settings ({diff}); choose another "
                          "--out, or delete the folder to write it anew")
    write_json(marker, settings)
    return False


def entry_path(root: Path, rel: str, where: str, absolute_list: bool = False) -> Path:
    """The file a list entry names, kept inside the dataset: an entry with ``..`` is refused (it would read files
    outside ``root``). Absolute entries are accepted only in a list of absolute paths (``absolute_list``; PaddleX
    lists are sometimes written that way)."""
    p = Path(rel)
    if ".." in p.parts:
        raise DataError(f"{where}: path {rel!r} climbs out of the dataset root {root} with '..'; list paths "
                        "relative to the root (or all of them absolute)")
    if p.is_absolute():
        if not absolute_list:
            raise DataError(f"{where}: absolute path {rel!r} among relative ones; list every path relative to the "
                            f"dataset root {root}, or every path absolute")
        return p
    return root / p


def is_absolute_list(paths) -> bool:
    """True when every path of a list file is absolute (then absolute entries are the user's choice)."""
    paths = list(paths)
    return bool(paths) and all(Path(p).is_absolute() for p in paths)
