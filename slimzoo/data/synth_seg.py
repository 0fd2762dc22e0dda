"""Deterministic synthetic street scenes for segmentation, in the PaddleSeg list format or the Cityscapes layout.

A scene is drawn in perspective from a random horizon and vanishing point: sky, a row of
buildings (with windows), trees and grass, the road (with lane markings) running to the vanishing point,
sidewalks on both sides, and, scaled by their distance, poles (thin), cars and people (small).
Sometimes the ego vehicle's hood covers the bottom of the image; it is labelled 255 (ignore),
as in Cityscapes. Textures are noise and patterns in class-leaning colours, with colour jitter
and sensor noise on top. The label PNG is drawn from the same masks as the image. Every image
is a pure function of (seed, split, index).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..storage import write_text
from ._parallel import map_ordered
from .images import synth_settings_match

SEG_CLASSES = ("road", "sidewalk", "building", "vegetation", "sky", "pole", "car", "person")
IGNORE = 255
FORMATS = ("paddleseg", "cityscapes")
_SS = 2  # supersampling for anti-aliased image edges
_COLOURS = {  # class-leaning base colours (RGB), jittered per scene
    "road": (90, 90, 95), "sidewalk": (170, 150, 140), "building": (120, 100, 90), "vegetation": (60, 120, 50),
    "sky": (120, 170, 225), "pole": (150, 150, 150), "car": (40, 60, 140), "person": (200, 60, 60)}


def _texture(rng: np.random.Generator, h: int, w: int, colour, spread: float = 40.0) -> np.ndarray:
    """Low-frequency noise around ``colour`` plus fine grain."""
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    small = rng.normal(0, 1, (gh, gw, 3)).astype(np.float32)
    low = np.asarray(Image.fromarray(((small * 0.25 + 0.5).clip(0, 1) * 255).astype(np.uint8))
                     .resize((w, h), Image.BICUBIC), np.float32) / 255 - 0.5
    grain = rng.normal(0, 0.08, (h, w, 1)).astype(np.float32)
    return np.asarray(colour, np.float32) + spread * (low + grain)


def _jitter(rng: np.random.Generator, name: str) -> np.ndarray:
    base = np.asarray(_COLOURS[name], np.float32)
    if name in ("car", "building"):  # these come in many colours
        base = 0.4 * base + 0.6 * rng.uniform(30, 230, 3)
    return np.clip(base + rng.normal(0, 18, 3), 0, 255)


class _Canvas:
    """The image (float RGB, supersampled) and its label map, painted together object by object."""

    def __init__(self, rng: np.random.Generator, w: int, h: int):
        self.rng, self.w, self.h = rng, w, h
        self.img = np.zeros((h * _SS, w * _SS, 3), np.float32)
        self.lab = np.full((h * _SS, w * _SS), IGNORE, np.uint8)

    def paint(self, draw_fn, cls: str | int, colour=None, spread: float = 40.0, texture=None) -> None:
        """``draw_fn(ImageDraw, scale)`` draws a mask in label-pixel coordinates times ``scale``."""
        m = Image.new("L", (self.w * _SS, self.h * _SS), 0)
        draw_fn(ImageDraw.Draw(m), _SS)
        a = np.asarray(m, np.float32) / 255
        ys, xs = np.nonzero(a)
        if not len(ys):
            return
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        a = a[y0:y1, x0:x1, None]
        tex = texture if texture is not None else _texture(self.rng, y1 - y0, x1 - x0,
                                                           colour if colour is not None else _jitter(self.rng, cls),
                                                           spread)
        region = self.img[y0:y1, x0:x1]
        region[:] = region * (1 - a) + tex[: y1 - y0, : x1 - x0] * a
        lab = self.lab[y0:y1, x0:x1]
        lab[a[..., 0] > 0.5] = IGNORE if cls == IGNORE else SEG_CLASSES.index(cls)


def _paint_background(c: _Canvas, rng, W: int, H: int, yh: float) -> None:
    """Sky (a gradient), buildings with windows along the horizon, trees, grass below the horizon."""
    sky = _jitter(rng, "sky")
    grad = np.linspace(1.15, 0.9, H * _SS, dtype=np.float32)[:, None, None]
    c.paint(lambda d, s: d.rectangle([0, 0, W * s, (yh + 2) * s], fill=255), "sky",
            texture=np.clip(sky * grad * np.ones((1, W * _SS, 1), np.float32), 0, 255))
    x = -rng.uniform(0, 20)
    while x < W:
        bw = W * rng.uniform(0.08, 0.3)
        top = yh - H * rng.uniform(0.05, 0.4)
        bottom = yh + H * 0.04
        col = _jitter(rng, "building")
        c.paint(lambda d, s, x=x, bw=bw, top=top, bottom=bottom: d.rectangle([x * s, top * s, (x + bw) * s, bottom * s],
                                                                           fill=255), "building", colour=col, spread=25)
        win = col * rng.uniform(0.4, 0.7)
        step = rng.uniform(5, 10)

        def windows(d, s, x=x, bw=bw, top=top, bottom=bottom, step=step):
            for wy in np.arange(top + 2, bottom - 3, step):
                for wx in np.arange(x + 2, x + bw - 3, step):
                    d.rectangle([wx * s, wy * s, (wx + step * 0.45) * s, (wy + step * 0.45) * s], fill=255)
        c.paint(windows, "building", colour=win, spread=10)
        x += bw + rng.uniform(0, 8)
    for _ in range(int(rng.integers(1, 5))):  # trees: clusters of blobs around the horizon
        tx, ty, tr = W * rng.uniform(0, 1), yh - H * rng.uniform(0.0, 0.2), H * rng.uniform(0.06, 0.18)

        def blobs(d, s, tx=tx, ty=ty, tr=tr, k=int(rng.integers(3, 7)), off=rng.uniform(-1, 1, (7, 2))):
            for j in range(k):
                cx, cy = tx + off[j, 0] * tr, ty + off[j, 1] * tr * 0.7
                d.ellipse([(cx - tr) * s, (cy - tr) * s, (cx + tr) * s, (cy + tr) * s], fill=255)
        c.paint(blobs, "vegetation", spread=60)
    c.paint(lambda d, s: d.rectangle([0, (yh + H * 0.02) * s, W * s, H * s], fill=255), "vegetation", spread=50)


def _paint_road(c: _Canvas, rng, W: int, H: int, yh: float, xv: float) -> tuple[float, float, float, float]:
    """The road to the vanishing point with lane marks, sidewalks beside it; returns (left, right, left sidewalk
    width, right sidewalk width) at the bottom edge."""
    left, right = W * rng.uniform(-0.4, 0.15), W * rng.uniform(0.85, 1.4)
    swl, swr = W * rng.uniform(0.1, 0.35), W * rng.uniform(0.1, 0.35)
    c.paint(lambda d, s: d.polygon([((left - swl) * s, H * s), (left * s, H * s), ((xv - 1) * s, yh * s),
                                    ((xv - 4) * s, yh * s)], fill=255), "sidewalk", spread=30)
    c.paint(lambda d, s: d.polygon([(right * s, H * s), ((right + swr) * s, H * s), ((xv + 4) * s, yh * s),
                                    ((xv + 1) * s, yh * s)], fill=255), "sidewalk", spread=30)
    c.paint(lambda d, s: d.polygon([(left * s, H * s), (right * s, H * s), ((xv + 1) * s, yh * s),
                                    ((xv - 1) * s, yh * s)], fill=255), "road", spread=20)

    def lanes(d, s, mid=(left + right) / 2):
        for t0 in np.arange(0.05, 1.0, 0.14):
            t1 = t0 + 0.06
            p = [(xv + (mid - xv) * t, yh + (H - yh) * t) for t in (t0, t1)]
            d.line([(p[0][0] * s, p[0][1] * s), (p[1][0] * s, p[1][1] * s)], fill=255, width=max(1, int(3 * t1 * s)))
    if rng.random() < 0.8:
        c.paint(lanes, "road", colour=np.full(3, rng.uniform(190, 240)), spread=10)
    return left, right, swl, swr


def _draw_car(d, s, x, y, cw, ch):
    d.rounded_rectangle([(x - cw / 2) * s, (y - ch * 0.65) * s, (x + cw / 2) * s, (y - ch * 0.1) * s],
                        radius=max(1, ch * 0.15 * s), fill=255)
    d.polygon([((x - cw * 0.35) * s, (y - ch * 0.6) * s), ((x - cw * 0.22) * s, (y - ch) * s),
               ((x + cw * 0.22) * s, (y - ch) * s), ((x + cw * 0.35) * s, (y - ch * 0.6) * s)], fill=255)
    for wx in (x - cw * 0.3, x + cw * 0.3):
        r = ch * 0.18
        d.ellipse([(wx - r) * s, (y - 2 * r) * s, (wx + r) * s, y * s], fill=255)


def _draw_person(d, s, x, y, ph):
    hr = ph * 0.09
    d.ellipse([(x - hr) * s, (y - ph) * s, (x + hr) * s, (y - ph + 2 * hr) * s], fill=255)
    d.ellipse([(x - ph * 0.13) * s, (y - ph + 2 * hr) * s, (x + ph * 0.13) * s, (y - ph * 0.4) * s], fill=255)
    for lx in (x - ph * 0.06, x + ph * 0.06):
        d.line([(lx * s, (y - ph * 0.45) * s), (lx * s, y * s)], fill=255, width=max(1, int(ph * 0.07 * s)))


def _paint_things(c: _Canvas, rng, H: int, yh: float, xv: float, road: tuple[float, float, float, float]) -> None:
    """Cars on the road, people mostly on the sidewalks, poles beside the road: painted far to near."""
    left, right, swl, swr = road

    def depth(y: float) -> float:  # 0 at the horizon, 1 at the bottom edge
        return max(0.0, (y - yh) / (H - yh))

    def road_x(y: float, side: float) -> float:  # x on the road (side in 0..1 from left to right edge)
        return xv + ((left + (right - left) * side) - xv) * depth(y)

    def walk_x(y: float, lr: int) -> float:  # x on a sidewalk
        edge = (left - swl * rng.uniform(0.2, 0.8)) if lr == 0 else (right + swr * rng.uniform(0.2, 0.8))
        return xv + (edge - xv) * depth(y)

    things = []  # (bottom y, kind, x)
    for _ in range(int(rng.integers(1, 5))):
        y = yh + (H - yh) * rng.uniform(0.1, 0.9)
        things.append((y, "car", road_x(y, rng.uniform(0.15, 0.85))))
    for _ in range(int(rng.integers(0, 6))):
        y = yh + (H - yh) * rng.uniform(0.1, 0.95)
        things.append((y, "person", walk_x(y, int(rng.integers(2))) if rng.random() < 0.8 else road_x(y, rng.random())))
    for _ in range(int(rng.integers(1, 6))):
        y = yh + (H - yh) * rng.uniform(0.05, 0.9)
        things.append((y, "pole", walk_x(y, int(rng.integers(2)))))
    for y, kind, x in sorted(things):
        t = depth(y) * (H - yh)  # pixels per unit of height at that depth
        if kind == "car":
            cw, ch = t * rng.uniform(0.9, 1.3), t * rng.uniform(0.45, 0.6)
            c.paint(lambda d, s, x=x, y=y, cw=cw, ch=ch: _draw_car(d, s, x, y, cw, ch), "car", spread=25)
        elif kind == "person":
            ph = t * rng.uniform(0.5, 0.7)
            c.paint(lambda d, s, x=x, y=y, ph=ph: _draw_person(d, s, x, y, ph), "person", spread=50)
        else:
            pw, ph = max(0.6, t * 0.025), t * rng.uniform(1.2, 2.0)
            c.paint(lambda d, s, x=x, y=y, pw=pw, ph=ph: d.rectangle([(x - pw / 2) * s, (y - ph) * s,
                                                                     (x + pw / 2) * s, y * s], fill=255),
                    "pole", spread=20)


def render_seg(seed: int, index: int, width: int = 256, height: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index``: (HxWx3 uint8 image, HxW uint8 label map of class ids, 255 = ignore)."""
    rng = np.random.default_rng([seed, index, 11])
    W, H = width, height
    c = _Canvas(rng, W, H)
    yh = H * rng.uniform(0.35, 0.55)  # horizon
    xv = W * rng.uniform(0.3, 0.7)  # vanishing point
    _paint_background(c, rng, W, H, yh)
    road = _paint_road(c, rng, W, H, yh, xv)
    _paint_things(c, rng, H, yh, xv, road)
    if rng.random() < 0.3:  # the ego vehicle's hood: ignored, as in Cityscapes
        hh = H * rng.uniform(0.05, 0.12)
        c.paint(lambda d, s: d.ellipse([-W * 0.2 * s, (H - hh) * s, W * 1.2 * s, (H + hh) * s], fill=255), IGNORE,
                colour=rng.uniform(10, 60, 3), spread=10)
    gain = rng.uniform(0.75, 1.2, 3) * rng.uniform(0.8, 1.15)
    img = Image.fromarray(np.clip(c.img * gain, 0, 255).astype(np.uint8)).resize((W, H), Image.LANCZOS)
    arr = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 8), (H, W, 3))
    lab = c.lab[_SS // 2::_SS, _SS // 2::_SS]
    return np.clip(arr, 0, 255).astype(np.uint8), np.ascontiguousarray(lab)


def _write_one(job) -> None:
    image_path, label_path, seed, index, width, height = job
    arr, lab = render_seg(seed, index, width, height)
    Image.fromarray(arr).save(image_path)
    Image.fromarray(lab).save(label_path)


def write_synth_seg(out: str | Path, *, fmt: str = "paddleseg", num_train: int = 1000, num_val: int = 200,
                    width: int = 256, height: int = 128, seed: int = 0, progress: bool = True) -> Path:
    """Write the dataset to ``out`` as ``paddleseg`` (lists + ``labels.txt``) or ``cityscapes`` (folder layout).

    PaddleSeg: ``images/``, ``labels/`` (single-channel PNG class ids), ``labels.txt``, ``{train,val}_list.txt``.
    Cityscapes: ``leftImg8bit/{split}/synth/*_leftImg8bit.png`` and ``gtFine/{split}/synth/*_gtFine_labelTrainIds.png``
    plus ``labels.txt`` (the synthetic classes, which are not Cityscapes' 19). The list / last files are written
    last, so their presence marks a complete dataset (reused as is).
    """
    from tqdm import tqdm

    if fmt not in FORMATS:
        from ..errors import ConfigError

        raise ConfigError(f"unknown segmentation format {fmt!r}; choose one of {FORMATS}")
    out = Path(out)
    done = out / ("val_list.txt" if fmt == "paddleseg" else "DONE")
    settings = {"task": "seg", "format": fmt, "num_train": num_train, "num_val": num_val, "width": width,
                "height": height, "seed": seed}
    if synth_settings_match(out, done, settings):
        return out
    write_text(out / "labels.txt", "\n".join(SEG_CLASSES) + "\n")
    for split, n, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1_000_003)):
        rels = []
        for i in range(n):
            if fmt == "paddleseg":
                rels.append((Path("images") / f"{split}_{i:06d}.png", Path("labels") / f"{split}_{i:06d}.png"))
            else:
                stem = f"synth_{split}_{i:06d}"
                rels.append((Path("leftImg8bit") / split / "synth" / f"{stem}_leftImg8bit.png",
                             Path("gtFine") / split / "synth" / f"{stem}_gtFine_labelTrainIds.png"))
        for folder in {(out / r).parent for pair in rels for r in pair}:
            folder.mkdir(parents=True, exist_ok=True)
        jobs = [(out / img, out / lab, split_seed, i, width, height) for i, (img, lab) in enumerate(rels)]
        for _ in tqdm(map_ordered(_write_one, jobs), total=n, desc=f"synth seg {split}",
                      disable=None if progress else True, leave=False):
            pass
        lines = [f"{img_rel.as_posix()} {lab_rel.as_posix()}" for img_rel, lab_rel in rels]
        if fmt == "paddleseg":
            write_text(out / f"{split}_list.txt", "\n".join(lines) + "\n")
    if fmt == "cityscapes":
        write_text(out / "DONE", "complete\n")
    return out


def colourise(label: np.ndarray) -> np.ndarray:
    """An RGB picture of a label map (class colours; ignore in black), for docs and reports."""
    pal = np.zeros((256, 3), np.uint8)
    for i, n in enumerate(SEG_CLASSES):
        pal[i] = _COLOURS[n]
    return pal[label]

