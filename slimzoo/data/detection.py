"""Detection datasets: COCO (instances JSON + image folder) and Pascal VOC (XML; PaddleX lists or VOC layout).

COCO::

    root/annotations/instances_{train,val}2017.json   (or instances_{train,val}.json)
    root/{train,val}2017/*.jpg                          (or root/{train,val}/, or root/images/)

VOC, PaddleX list format::

    root/labels.txt                                     one class name a line
    root/{train,val}_list.txt                           ``JPEGImages/x.jpg Annotations/x.xml`` per line

VOC, standard layout: ``root/ImageSets/Main/{train,val}.txt`` (image ids), ``root/JPEGImages/<id>.jpg``,
``root/Annotations/<id>.xml``; class names from ``root/labels.txt`` or the 20 VOC classes.

Every sample is (image, target) with target boxes in ``x1, y1, x2, y2`` pixels and contiguous
class ids ``0..C-1``; images are read from disk on demand. Bad input raises DataError naming the
file (and the annotation) at fault.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .classification import IMAGENET_MEAN, IMAGENET_STD
from .images import SampleDataset, entry_path, is_absolute_list, load_rgb, read_labels_txt

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")


@dataclass
class DetSample:
    path: Path
    image_id: int
    width: int
    height: int
    boxes: np.ndarray  # [K, 4] float32 x1, y1, x2, y2
    labels: np.ndarray  # [K] int64
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def detect_format(root: str | Path) -> str:
    """``coco`` or ``voc`` from the files in ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if (root / "annotations").is_dir():
        return "coco"
    if (root / "Annotations").is_dir():
        return "voc"
    raise DataError(f"{root}: neither COCO (annotations/instances_*.json) nor VOC (Annotations/*.xml) layout")


def _check_box(box, w: int, h: int, where: str) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(np.isfinite([x1, y1, x2, y2])):
        raise DataError(f"{where}: box {box} has non-finite coordinates")
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box {box} has no area (need x2 > x1 and y2 > y1)")
    if x1 < -1 or y1 < -1 or x2 > w + 1 or y2 > h + 1:
        raise DataError(f"{where}: box {box} lies outside the {w}x{h} image")
    return [max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)]


def _field(obj, key: str, kind, where: str):
    """``obj[key]``, checked to be a ``kind`` (int also accepts integral floats; bool is never a number)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise DataError(f"{where}: missing key {key!r}")
    v = obj[key]
    if kind is int and isinstance(v, float) and v.is_integer():
        v = int(v)
    ok = isinstance(v, kind) and not isinstance(v, bool) if kind in (int, float, (int, float)) else isinstance(v, kind)
    if not ok:
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise DataError(f"{where}: {key!r} must be a {name}, got {v!r}")
    return v


def load_coco(root: str | Path, split: str) -> tuple[list[DetSample], list[str]]:
    """Samples and class names of a COCO split (category ids mapped to 0..C-1 in id order)."""
    root = Path(root)
    ann = next((p for p in (root / "annotations" / f"instances_{split}2017.json",
                            root / "annotations" / f"instances_{split}.json") if p.is_file()), None)
    if ann is None:
        raise DataError(f"{root}/annotations: no instances_{split}2017.json or instances_{split}.json")
    try:
        data = json.loads(ann.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{ann}: not valid JSON: {e}") from None
    except RecursionError:
        raise DataError(f"{ann}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise DataError(f"{ann}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{ann}: missing list {key!r}")
    cats = []
    for k, c in enumerate(data["categories"]):
        where = f"{ann}: categories[{k}]"
        cats.append((_field(c, "id", int, where), str(_field(c, "name", str, where))))
    cats.sort()
    cat_index = {cid: i for i, (cid, _) in enumerate(cats)}
    if len(cat_index) != len(cats):
        raise DataError(f"{ann}: duplicate category ids")
    img_dir = next((d for d in (root / f"{split}2017", root / split, root / "images") if d.is_dir()), None)
    if img_dir is None:
        raise DataError(f"{root}: no image folder {split}2017/, {split}/ or images/")
    per_image: dict[int, list] = {}
    for k, a in enumerate(data["annotations"]):
        where = f"{ann}: annotations[{k}]" + (f" (id {a.get('id')!r})" if isinstance(a, dict) else "")
        cid = _field(a, "category_id", int, where)
        if cid not in cat_index:
            raise DataError(f"{where}: category_id {cid} is not in 'categories'")
        if a.get("iscrowd", 0):
            continue
        bbox = _field(a, "bbox", list, where)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise DataError(f"{where}: bbox must be [x, y, width, height] numbers, got {bbox!r}")
        per_image.setdefault(_field(a, "image_id", int, where), []).append((bbox, cat_index[cid], where))
    samples, seen = [], set()
    for k, im in enumerate(data["images"]):
        where = f"{ann}: images[{k}]"
        iid, w, h = (_field(im, key, int, where) for key in ("id", "width", "height"))
        name = _field(im, "file_name", str, where)
        if w < 1 or h < 1:
            raise DataError(f"{where}: image size {w}x{h} is not positive")
        if iid in seen:
            raise DataError(f"{where}: duplicate image id {iid}")
        seen.add(iid)
        boxes, labels = [], []
        for (x, y, bw, bh), label, bwhere in per_image.pop(iid, []):
            boxes.append(_check_box([x, y, x + bw, y + bh], w, h, bwhere))
            labels.append(label)
        samples.append(DetSample(entry_path(img_dir, name, where), iid, w, h,
                                 np.asarray(boxes, np.float32).reshape(-1, 4),
                                 np.asarray(labels, np.int64), np.zeros(len(labels), bool)))
    if per_image:
        raise DataError(f"{ann}: annotations refer to image id(s) {sorted(per_image)[:5]} not in 'images'")
    if not samples:
        raise DataError(f"{ann}: no images")
    return samples, [n for _, n in cats]


def parse_voc_xml(path: Path, classes: list[str], image_id: int, image_path: Path) -> DetSample:
    """One VOC annotation file; unknown class names and bad boxes are errors naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: not valid XML: {e}") from None
    size = root.find("size")
    try:
        w, h = int(float(size.findtext("width"))), int(float(size.findtext("height")))
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{path}: missing or bad <size><width>/<height>") from None
    index = {n: i for i, n in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise DataError(f"{path}: object {k} has class {name!r}, not in the class list ({len(classes)} classes)")
        bb = obj.find("bndbox")
        try:
            box = [float(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (AttributeError, TypeError, ValueError):
            raise DataError(f"{path}: object {k} has a missing or bad <bndbox>") from None
        boxes.append(_check_box(box, w, h, f"{path}: object {k}"))
        labels.append(index[name])
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return DetSample(image_path, image_id, w, h, np.asarray(boxes, np.float32).reshape(-1, 4),
                     np.asarray(labels, np.int64), np.asarray(difficult, bool))


def load_voc(root: str | Path, split: str) -> tuple[list[DetSample], list[str]]:
    """Samples and class names of a VOC split (PaddleX list format or the standard VOC layout)."""
    root = Path(root)
    list_file = root / f"{split}_list.txt"
    if list_file.is_file():
        classes = read_labels_txt(root / "labels.txt")
        rows = []
        for i, raw in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise DataError(f"{list_file}:{i}: expected 'JPEGImages/x.jpg Annotations/x.xml', got {raw!r}")
            rows.append((i, parts))
        absolute = is_absolute_list(p for _, parts in rows for p in parts)
        samples = []
        for i, (img, xml) in rows:
            where = f"{list_file}:{i}"
            samples.append(parse_voc_xml(entry_path(root, xml, where, absolute), classes, len(samples) + 1,
                                         entry_path(root, img, where, absolute)))
    else:
        ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.is_file():
            raise DataError(f"{root}: neither {split}_list.txt nor ImageSets/Main/{split}.txt")
        classes = read_labels_txt(root / "labels.txt") if (root / "labels.txt").is_file() else list(VOC_CLASSES)
        ids = [x.strip() for x in ids_file.read_text(encoding="utf-8").splitlines() if x.strip()]
        samples = [parse_voc_xml(entry_path(root, f"Annotations/{x}.xml", f"{ids_file}:{k + 1}"), classes, k + 1,
                                 entry_path(root, f"JPEGImages/{x}.jpg", f"{ids_file}:{k + 1}"))
                   for k, x in enumerate(ids)]
    if not samples:
        raise DataError(f"{root}: split {split!r} has no images")
    return samples, classes


def load_detection(root: str | Path, split: str, fmt: str | None = None) -> tuple[list[DetSample], list[str], str]:
    """(samples, class names, format) of a COCO or VOC split."""
    fmt = fmt or detect_format(root)
    samples, classes = (load_coco if fmt == "coco" else load_voc)(root, split)
    return samples, classes, fmt


def train_transform(size: int):
    """Box-aware augmentation: colour, flip, scale/translate, then a square resize."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ColorJitter(0.3, 0.3, 0.3, 0.03),
        v2.RandomHorizontalFlip(),
        v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.75, 1.25)),
        v2.Resize((size, size), antialias=True),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(size: int):
    """A square resize and normalisation (boxes follow; predictions are mapped back to the original size)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class DetectionDataset(SampleDataset):
    """Images streamed from disk with their boxes; ``transform`` sees (image, target) as tv_tensors."""

    def __getitem__(self, i: int):
        from torchvision import tv_tensors
        from torchvision.transforms.v2 import functional as F

        s = self.samples[i]
        img = load_rgb(s.path)
        if img.size != (s.width, s.height):
            raise DataError(f"{s.path}: image is {img.size[0]}x{img.size[1]} but its annotation says "
                            f"{s.width}x{s.height}")
        image = tv_tensors.Image(F.pil_to_tensor(img))
        target = {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(s.boxes), format="XYXY",
                                                    canvas_size=(s.height, s.width)),
                  "labels": torch.from_numpy(s.labels)}
        if self.transform is not None:
            image, target = self.transform(image, target)
        h, w = image.shape[-2:]
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor).float(), "labels": target["labels"],
            "image_id": s.image_id, "index": i, "orig_size": (s.height, s.width), "input_size": (h, w)}


def collate(batch):
    """Stack images (all the same size after the transforms); keep targets as a list of dicts."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


def box_sizes(samples: list[DetSample], image_size: int) -> np.ndarray:
    """``[K, 2]`` widths and heights of every box of ``samples`` after the square resize to ``image_size``."""
    wh = [s.boxes[:, 2:] - s.boxes[:, :2] for s in samples if len(s.boxes)]
    scale = [np.tile([[image_size / s.width, image_size / s.height]], (len(s.boxes), 1)) for s in samples
             if len(s.boxes)]
    if not wh:
        return np.zeros((0, 2), np.float64)
    return np.concatenate(wh).astype(np.float64) * np.concatenate(scale)


def kmeans_anchors(wh: np.ndarray, k: int = 9, *, iters: int = 300, restarts: int = 10, seed: int = 0) -> np.ndarray:
    """``k`` anchors (w, h), smallest area first, from k-means on box sizes with 1 - IoU as the distance (boxes and
    anchors share a centre), as YOLOv2/v3 fitted theirs to COCO; k-means++ seeding, the best of ``restarts`` runs
    (highest mean IoU of each box with its nearest anchor), deterministic in ``seed``."""
    from ..errors import DataError

    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    wh = wh[(wh > 0).all(1)]
    if len(wh) < k:
        raise DataError(f"{len(wh)} boxes are too few to fit {k} anchors; give the anchors instead")

    def iou(boxes, anchors):
        inter = np.minimum(boxes[:, None], anchors[None]).prod(-1)
        return inter / (boxes.prod(-1)[:, None] + anchors.prod(-1)[None] - inter)

    rng = np.random.default_rng(seed)
    best, best_fit = None, -1.0
    for _ in range(restarts):
        centres = wh[[rng.integers(len(wh))]]
        while len(centres) < k:  # k-means++: next centre drawn in proportion to its distance from the nearest one
            d = 1 - iou(wh, centres).max(1)
            centres = np.concatenate([centres, wh[[rng.choice(len(wh), p=d / d.sum())]]]) if d.sum() > 0 else \
                np.concatenate([centres, centres[:1]])
        for _ in range(iters):
            assign = iou(wh, centres).argmax(1)
            new = np.array([np.median(wh[assign == j], 0) if (assign == j).any() else centres[j] for j in range(k)])
            if np.allclose(new, centres):
                break
            centres = new
        fit = float(iou(wh, centres).max(1).mean())
        if fit > best_fit:
            best, best_fit = centres, fit
    return best[np.argsort(best.prod(1), kind="stable")]
