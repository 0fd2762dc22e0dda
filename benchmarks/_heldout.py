"""Shared by the quantization benchmarks: a larger validation set, per-image predictions, their statistics.

On the zoo's 1,000 validation images one image is 0.1 Top-1 points, and two INT8 files of the same model
differ by a few images either way from rounding luck alone. The synthetic generator draws every image as a
pure function of (seed, split, index), so a validation split of N images from the same spec holds the zoo's
1,000 as its first images and N - 1,000 more from the same distribution; comparing methods on it, with the
paired standard error of the difference, says which differences are real.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch


def heldout_task(zoo, row_id: str, num_val: int):
    """The row's classification task, its validation split widened to ``num_val`` synthetic images.

    Returns the zoo's own task unchanged when the dataset is the user's (``--data-root``) or ``num_val`` is
    not larger than the zoo's split."""
    from slimzoo.data.synth_cls import write_synth_cls
    from slimzoo.tasks import get_task
    from slimzoo.zoo.recipes import config_hash as _hash

    r = zoo.recipe(row_id)
    task = zoo.task(r)
    spec = zoo.profile.get("datasets", {}).get(r["dataset"])
    if r["dataset"] in zoo.data_roots or spec is None or num_val <= spec.get("num_val", 0):
        return task
    spec = {**spec, "num_train": 1, "num_val": num_val}
    root = write_synth_cls(zoo.out / "data" / f"{r['dataset']}-heldout-{_hash(spec)}", progress=True, **spec)
    return get_task("classification", data_root=root, image_size=r["image_size"], batch_size=256)


@torch.no_grad()
def predictions(task, predict) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, true class) for every validation image, in order."""
    from tqdm import tqdm

    pred, true = [], []
    for images, targets in tqdm(task.val_loader(), desc="eval", leave=False, disable=None):
        pred.append(predict(images).argmax(1).numpy())
        true.append(targets.numpy())
    return np.concatenate(pred), np.concatenate(true)


def _hits(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per image, the share of draws that got it right (``pred``: one row of predictions per draw)."""
    return (np.atleast_2d(pred) == true).mean(axis=0)


def _mean_ci(d: np.ndarray) -> tuple[float, float]:
    return 100 * d.mean(), 100 * 1.96 * (d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else 0.0)


def compare(pred: np.ndarray, ref_pred: np.ndarray, true: np.ndarray) -> dict:
    """Top-1 of ``pred``, its drop against ``ref_pred`` with the 95% half-width of that drop (paired over
    images), and the share of images on which the two predict the same class.

    ``pred`` may hold several rows, one per calibration draw: Top-1 and agreement are then means over the
    draws, and the interval comes from each image's mean over the draws (images are the independent unit)."""
    drop, ci = _mean_ci(_hits(ref_pred, true) - _hits(pred, true))
    return {"top1": 100 * _hits(pred, true).mean(), "drop": drop, "drop_ci95": ci,
            "agree": 100 * float((np.atleast_2d(pred) == ref_pred).mean()), "num_images": len(true)}


def paired_gap(pred_a: np.ndarray, pred_b: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Top-1 of a minus Top-1 of b (points) and the 95% half-width of that difference, paired over images
    (either may hold one row of predictions per calibration draw)."""
    return _mean_ci(_hits(pred_a, true) - _hits(pred_b, true))


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (dicts; a key missing from a row is left empty) as a CSV file, atomically, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def machine_line() -> str:
    """'date, CPU (N cores), ONNX Runtime X': where and when a benchmark's figures were measured."""
    from slimzoo.zoo import machine_info

    mi = machine_info()
    return f"{mi['date']}, {mi['cpu']} ({mi['cores']} cores), ONNX Runtime {mi['onnxruntime']}"
