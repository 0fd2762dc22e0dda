"""Deterministic synthetic classification data, written in the PaddleX list format.

Each image shows one object whose *shape* is the class (ten shapes, some deliberately
alike: square/pentagon/hexagon/circle), with colour, texture, scale, rotation and
position as nuisances, on a cluttered background of small distractor shapes, with
random occluders and sensor noise. Every image is a pure function of (seed, split,
index), so the same seed gives the same bytes.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..storage import write_text
from ._parallel import map_ordered
from .images import synth_settings_match

SHAPES = ("circle", "ellipse", "ring", "triangle", "square", "pentagon", "hexagon", "star", "cross",
          "crescent")
_SS = 2  # supersampling factor for anti-aliased edges


def _regular(n: int, rot: float, inner: float | None = None) -> list[tuple[float, float]]:
    pts = []
    k = n * 2 if inner else n
    for i in range(k):
        r = (inner if (inner and i % 2) else 1.0)
        a = rot + 2 * math.pi * i / k
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float, rot: float,
               aspect: float = 1.0) -> Image.Image:
    """An L-mode mask of ``shape`` centred at (cx, cy) with radius r and rotation ``rot``."""
    m = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(m)

    def poly(pts):
        c, s = math.cos(rot), math.sin(rot)
        d.polygon([(cx + r * (x * c - y * aspect * s), cy + r * (x * s + y * aspect * c)) for x, y in pts],
                  fill=255)

    def disc(rr, ox=0.0, oy=0.0, fill=255):
        x, y = cx + ox * r, cy + oy * r
        d.ellipse([x - rr * r, y - rr * r, x + rr * r, y + rr * r], fill=fill)

    if shape == "circle":
        disc(1.0)
    elif shape == "ellipse":
        poly([(math.cos(t), 0.5 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)])
    elif shape == "ring":
        disc(1.0)
        disc(0.55, fill=0)
    elif shape in ("triangle", "square", "pentagon", "hexagon"):
        n = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6}[shape]
        poly(_regular(n, 0.0))
    elif shape == "star":
        poly(_regular(5, 0.0, inner=0.45))
    elif shape == "cross":
        w = 0.33
        poly([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w),
              (-1, -w), (-w, -w)])
    elif shape == "crescent":
        disc(1.0)
        c, s = math.cos(rot), math.sin(rot)
        disc(0.85, 0.45 * c, 0.45 * s, fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m


def _class_colour(rng: np.random.Generator, label: int) -> np.ndarray:
    """A colour whose hue leans towards the class's own hue: a partial cue, shape settles the rest."""
    import colorsys

    h = (label / len(SHAPES) + rng.normal(0, 0.03)) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))) * 255


def _texture(rng: np.random.Generator, size: int, colour: np.ndarray | None = None) -> np.ndarray:
    """An RGB texture: solid, stripes, checker, dots or smooth noise, in random colours."""
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    kind = rng.integers(5)
    if colour is not None:
        c1, c2 = colour, colour * 0.55 + c2 * 0.45
        kind = 0 if rng.random() < 0.75 else kind
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:
        t = np.zeros((size, size), np.float32)
    elif kind == 1:
        a, period = rng.uniform(0, math.pi), rng.uniform(6, 20) * _SS
        t = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period) > 0).astype(np.float32)
    elif kind == 2:
        p = rng.uniform(6, 16) * _SS
        t = ((np.floor(xx / p) + np.floor(yy / p)) % 2).astype(np.float32)
    elif kind == 3:
        p = rng.uniform(6, 14) * _SS
        t = ((np.hypot(xx % p - p / 2, yy % p - p / 2)) < p / 4).astype(np.float32)
    else:
        small = rng.uniform(0, 1, (6, 6)).astype(np.float32)
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                       np.float32) / 255
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def background(rng: np.random.Generator, S: int, clutter_count=(3, 8), dot_radius=(0.02, 0.06)) -> np.ndarray:
    """An SxSx3 float background: a gradient between two colours, a low-contrast texture and clutter
    (strokes and dots, never a class shape)."""
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    g = np.linspace(0, 1, S, dtype=np.float32)
    g = g[:, None] if rng.random() < 0.5 else g[None, :]
    img = c1 + (c2 - c1) * g[..., None] * np.ones((S, S, 1), np.float32)
    img = 0.8 * img + 0.2 * _texture(rng, S)
    clutter = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(clutter)
    for _ in range(rng.integers(*clutter_count)):
        x, y = rng.uniform(0, S, 2)
        if rng.random() < 0.5:
            d.line([x, y, x + rng.uniform(-0.3, 0.3) * S, y + rng.uniform(-0.3, 0.3) * S], fill=255,
                   width=int(rng.integers(1, 4) * _SS))
        else:
            rr = rng.uniform(*dot_radius) * S
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=255)
    a = np.asarray(clutter, np.float32)[..., None] / 255 * rng.uniform(0.4, 0.9)
    return img * (1 - a) + rng.uniform(0, 255, 3) * a


def render(seed: int, index: int, size: int = 72) -> tuple[np.ndarray, int]:
    """Render image ``index`` of a dataset: returns (HxWx3 uint8, class id)."""
    rng = np.random.default_rng([seed, index])
    label = int(rng.integers(len(SHAPES)))
    S = size * _SS
    img = background(rng, S)
    # the object
    r = rng.uniform(0.24, 0.42) * S
    cx, cy = rng.uniform(0.8 * r, S - 0.8 * r), rng.uniform(0.8 * r, S - 0.8 * r)
    m = shape_mask(SHAPES[label], S, cx, cy, r, rng.uniform(0, 2 * math.pi))
    a = np.asarray(m, np.float32)[..., None] / 255
    img = img * (1 - a) + _texture(rng, S, _class_colour(rng, label)) * a
    # occluders: bars or blobs that hide part of the object
    if rng.random() < 0.3:
        occ = Image.new("L", (S, S), 0)
        d = ImageDraw.Draw(occ)
        ox, oy = cx + rng.uniform(-r, r), cy + rng.uniform(-r, r)
        w, h = rng.uniform(0.2, 0.7) * r, rng.uniform(0.2, 0.7) * r
        (d.rectangle if rng.random() < 0.5 else d.ellipse)([ox - w, oy - h, ox + w, oy + h], fill=255)
        a = np.asarray(occ, np.float32)[..., None] / 255
        img = img * (1 - a) + rng.uniform(0, 255, 3) * a
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.LANCZOS)
    arr = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(0, 12), (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8), label


def _write_one(job) -> int:
    out, rel, seed, index, size = job
    arr, label = render(seed, index, size)
    Image.fromarray(arr).save(out / rel, quality=92)
    return label


def write_synth_cls(out: str | Path, *, num_train: int = 8000, num_val: int = 1000, size: int = 72,
                    seed: int = 0, progress: bool = True) -> Path:
    """Write the dataset to ``out`` in the list format; existing complete datasets are reused."""
    from tqdm import tqdm

    out = Path(out)
    settings = {"task": "cls", "num_train": num_train, "num_val": num_val, "size": size, "seed": seed}
    if synth_settings_match(out, out / "val_list.txt", settings):
        return out  # list files are written last (val after train), so val's means a complete dataset
    write_text(out / "labels.txt", "\n".join(SHAPES) + "\n")
    for split, n, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1_000_003)):
        (out / split).mkdir(parents=True, exist_ok=True)
        jobs = [(out, f"{split}/{i:06d}.jpg", split_seed, i, size) for i in range(n)]
        labels = tqdm(map_ordered(_write_one, jobs), total=n, desc=f"synth cls {split}",
                      disable=None if progress else True, leave=False)
        lines = [f"{rel} {label}" for (_, rel, *_), label in zip(jobs, labels, strict=True)]
        write_text(out / f"{split}_list.txt", "\n".join(lines) + "\n")
    return out
