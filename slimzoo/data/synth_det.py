"""Deterministic synthetic detection data, written as COCO (instances JSON) or Pascal VOC (XML, PaddleX lists).

Each image holds one to ``max_objects`` objects of the classes in :data:`DET_CLASSES` (shapes,
with class-leaning colours and textures), of sizes from small to large, overlapping a little
(partial occlusion), over a cluttered background of strokes and dots; every box is the tight
box of the object's visible mask. Every image is a pure function of (seed, split, index).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from ..storage import write_text
from ._parallel import map_ordered
from .images import synth_settings_match
from .synth_cls import _SS, _class_colour, _texture, background, shape_mask

DET_CLASSES = ("circle", "triangle", "square", "star", "cross", "ring")
FORMATS = ("coco", "voc")


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def render_det(seed: int, index: int, size: int = 128, max_objects: int = 5
               ) -> tuple[np.ndarray, list[tuple[float, float, float, float]], list[int]]:
    """Image ``index``: (HxWx3 uint8, boxes ``x1, y1, x2, y2`` in pixels, class ids)."""
    rng = np.random.default_rng([seed, index, 7])
    S = size * _SS
    img = background(rng, S, clutter_count=(3, 9), dot_radius=(0.01, 0.03))

    placed: list[tuple[np.ndarray, int]] = []  # (mask, label), later ones drawn on top
    boxes_est: list[tuple[float, float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _try in range(10):  # find a spot that overlaps the others only a little
            r = S * math.exp(rng.uniform(math.log(0.06), math.log(0.28)))
            cx, cy = rng.uniform(0.7 * r, S - 0.7 * r, 2)
            est = (cx - r, cy - r, cx + r, cy + r)
            if all(_box_iou(est, b) < 0.15 for b in boxes_est):
                break
        else:
            continue
        label = int(rng.integers(len(DET_CLASSES)))
        m = np.asarray(shape_mask(DET_CLASSES[label], S, cx, cy, r, rng.uniform(0, 2 * math.pi)), np.float32) / 255
        img = img * (1 - m[..., None]) + _texture(rng, S, _class_colour(rng, label * 10 // len(DET_CLASSES))) * m[
            ..., None]
        placed = [(pm * (1 - m), pl) for pm, pl in placed] + [(m, label)]
        boxes_est.append(est)
    boxes, labels = [], []
    for m, label in placed:
        ys, xs = np.nonzero(m > 0.5)
        if len(xs) < 4 * _SS * _SS:  # hidden almost entirely: not an object any more
            continue
        boxes.append((float(xs.min()) / _SS, float(ys.min()) / _SS, float(xs.max() + 1) / _SS,
                      float(ys.max() + 1) / _SS))
        labels.append(label)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.LANCZOS)
    arr = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(0, 10), (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8), boxes, labels


def _voc_xml(filename: str, size: int, boxes, labels) -> str:
    objs = "".join(
        f"  <object>\n    <name>{escape(DET_CLASSES[c])}</name>\n    <difficult>0</difficult>\n    <bndbox>"
        f"<xmin>{b[0]:.1f}</xmin><ymin>{b[1]:.1f}</ymin><xmax>{b[2]:.1f}</xmax><ymax>{b[3]:.1f}</ymax></bndbox>\n"
        "  </object>\n" for b, c in zip(boxes, labels, strict=True))
    return (f"<annotation>\n  <filename>{escape(filename)}</filename>\n  <size><width>{size}</width>"
            f"<height>{size}</height><depth>3</depth></size>\n{objs}</annotation>\n")


def _write_one(job):
    path, seed, index, size, max_objects = job
    arr, boxes, labels = render_det(seed, index, size, max_objects)
    Image.fromarray(arr).save(path, quality=92)
    return boxes, labels


def write_synth_det(out: str | Path, *, fmt: str = "coco", num_train: int = 2000, num_val: int = 500,
                    size: int = 128, max_objects: int = 5, seed: int = 0, progress: bool = True) -> Path:
    """Write the dataset to ``out`` as ``coco`` (COCO 2017 layout) or ``voc`` (PaddleX VOC lists).

    COCO: ``train2017/``, ``val2017/``, ``annotations/instances_{train,val}2017.json``.
    VOC: ``JPEGImages/``, ``Annotations/*.xml``, ``labels.txt``, ``train_list.txt``, ``val_list.txt``.
    The index files are written last, so their presence marks a complete dataset (reused as is).
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown detection format {fmt!r}; choose one of {FORMATS}")
    out = Path(out)
    done = out / ("annotations/instances_val2017.json" if fmt == "coco" else "val_list.txt")
    settings = {"task": "det", "format": fmt, "num_train": num_train, "num_val": num_val, "size": size,
                "max_objects": max_objects, "seed": seed}
    if synth_settings_match(out, done, settings):
        return out
    if fmt == "voc":
        write_text(out / "labels.txt", "\n".join(DET_CLASSES) + "\n")
    for split, n, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1_000_003)):
        images, anns, lines = [], [], []
        names = [f"{split}_{i:06d}" for i in range(n)]
        rels = [Path(f"{split}2017" if fmt == "coco" else "JPEGImages") / f"{name}.jpg" for name in names]
        (out / (f"{split}2017" if fmt == "coco" else "JPEGImages")).mkdir(parents=True, exist_ok=True)
        jobs = [(out / rel, split_seed, i, size, max_objects) for i, rel in enumerate(rels)]
        drawn = tqdm(map_ordered(_write_one, jobs), total=n, desc=f"synth det {split}",
                     disable=None if progress else True, leave=False)
        for i, (name, rel, (boxes, labels)) in enumerate(zip(names, rels, drawn, strict=True)):
            if fmt == "coco":
                images.append({"id": i + 1, "file_name": rel.name, "width": size, "height": size})
                for b, c in zip(boxes, labels, strict=True):
                    w, h = b[2] - b[0], b[3] - b[1]
                    anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c + 1,
                                 "bbox": [round(b[0], 2), round(b[1], 2), round(w, 2), round(h, 2)],
                                 "area": round(w * h, 2), "iscrowd": 0})
            else:
                write_text(out / "Annotations" / f"{name}.xml", _voc_xml(rel.name, size, boxes, labels))
                lines.append(f"{rel.as_posix()} Annotations/{name}.xml")
        if fmt == "coco":
            cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(DET_CLASSES)]
            write_text(out / "annotations" / f"instances_{split}2017.json",
                       json.dumps({"images": images, "annotations": anns, "categories": cats}))
        else:
            write_text(out / f"{split}_list.txt", "\n".join(lines) + "\n")
    return out
