"""How fast the zoo's detectors learn: one ablation per training choice, with the validation curve of each.

Trains a zoo detector row (default: det-yolov3_mobilenet_v1-coco-none, backbone from the zoo's classifier row) on its
synthetic dataset under several variants, scoring the validation set after every epoch (box mAP, AP50, VOC mAP@0.5),
and writes the curves, the wall time and the loss terms of the last epoch to benchmarks/results/det_convergence.md.
A variant is a name and a JSON object of overrides: ``anchors`` ("coco": YOLOv3's COCO anchors; "kmeans": fitted to
the training boxes at the training resolution), ``train`` (TrainConfig keys), ``loss`` (``anchor_thresh``: extra
positive anchors, see yolo_loss).

    python benchmarks/det_convergence.py --zoo runs/zoo [--row ROW] [--epochs 4] \\
        [--variant 'kmeans={"anchors": "kmeans"}' ...]
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import time
from pathlib import Path

import torch

from slimzoo.storage import read_json, write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_VARIANTS = {  # the ablations behind the zoo's detector settings (k-means anchors + extra positives at 0.2)
    "coco anchors (before)": {"anchors": "coco"},
    "k-means anchors": {"anchors": "kmeans"},
    "k-means, lr 3e-3": {"anchors": "kmeans", "train": {"lr": 0.003}},
    "k-means, extra positives (anchor IoU > 0.3)": {"anchors": "kmeans", "loss": {"anchor_thresh": 0.3}},
    "COCO anchors, extra positives (anchor IoU > 0.3)": {"anchors": "coco", "loss": {"anchor_thresh": 0.3}},
    "k-means, extra positives (anchor IoU > 0.2)": {"anchors": "kmeans", "loss": {"anchor_thresh": 0.2}},
}


def run_variant(zoo, row_id: str, spec: dict, epochs: int) -> dict:
    """Train the row's detector under ``spec`` with the task's own loss (``loss.anchor_thresh`` set on the task),
    scoring each epoch with the zoo's :func:`~slimzoo.zoo.artifacts.curve_point` (metrics and loss terms)."""
    from slimzoo.models import create_model, load_backbone
    from slimzoo.training import TrainConfig, fit
    from slimzoo.zoo.artifacts import curve_point

    r = zoo.recipe(row_id)
    task = zoo.task(r)
    task.anchor_thresh = spec.get("loss", {}).get("anchor_thresh")  # None: YOLOv3's one anchor per object
    kwargs = {}
    if spec.get("anchors") == "kmeans":
        from slimzoo.tasks.detection import fit_dataset_anchors

        kwargs = {"anchors": fit_dataset_anchors(task), "anchor_size": r["image_size"]}
    tcfg = TrainConfig.from_dict({**r["train"], "epochs": epochs, **spec.get("train", {})})
    torch.manual_seed(tcfg.seed)
    model = create_model(r["model"], num_classes=task.num_classes, width_mult=r.get("width_mult", 1.0), **kwargs)
    if r.get("backbone_from") and not spec.get("no_backbone"):
        load_backbone(model, zoo.baseline(r["backbone_from"])[0].state_dict())
    curve = []
    t0 = time.perf_counter()

    def on_epoch_end(epoch, m):
        train_s = time.perf_counter() - t0 - sum(c["eval_s"] for c in curve)
        t = time.perf_counter()
        point = curve_point(epoch, m, task)
        curve.append({"epoch": epoch + 1, **{k: round(point["metrics"][k], 2) for k in ("bbox_map", "ap50", "voc_map")},
                      "eval_s": round(time.perf_counter() - t, 1), "train_s": round(train_s, 1),
                      "terms": {k: round(v, 3) for k, v in point["loss_terms"].items()}})
        print(curve[-1], flush=True)

    fit(model, task.train_loader(tcfg.batch_size), task.loss_fn, tcfg, progress=True, on_epoch_end=on_epoch_end)
    return {"curve": curve, "anchors": kwargs.get("anchors"), "train_s": curve[-1]["train_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo", help="zoo output folder (synthetic data, the backbone's classifier)")
    ap.add_argument("--row", default="det-yolov3_mobilenet_v1-coco-none")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="a variant to train (repeatable); default: the ablations of DEFAULT_VARIANTS")
    ap.add_argument("--name", default="det_convergence")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from slimzoo.zoo import Zoo

    torch.set_num_threads(args.threads)
    variants = dict(v.split("=", 1) for v in args.variant)
    variants = {k: json.loads(v) for k, v in variants.items()} or copy.deepcopy(DEFAULT_VARIANTS)
    zoo = Zoo(Path(args.zoo))
    work = Path(args.zoo) / "bench_det_convergence"
    rows = []
    for name, spec in variants.items():
        cache = work / f"{args.row}-{json.dumps(spec, sort_keys=True)}-e{args.epochs}.json".replace("/", "_")
        if cache.is_file():
            res = read_json(cache)
        else:
            print(f"== {name}: {spec}", flush=True)
            res = run_variant(zoo, args.row, spec, args.epochs)
            write_json(cache, res)
        rows.append({"variant": name, "spec": spec, **res})
    out = Path(args.out)
    lines = [f"# Detector convergence: {args.row}, {args.epochs} epochs", "",
             f"`python benchmarks/det_convergence.py --row {args.row} --epochs {args.epochs}` (variants below); "
             "validation after every epoch; train s = training wall time without the evaluations.", "",
             "| Variant | Overrides | Box mAP by epoch | AP50 (last) | VOC mAP@0.5 (last) | Train s | Loss terms (last epoch, "
             "per image) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        last = r["curve"][-1]
        lines.append(f"| {r['variant']} | `{json.dumps(r['spec'])}` | "
                     + " / ".join(f"{c['bbox_map']:.1f}" for c in r["curve"])
                     + f" | {last['ap50']:.1f} | {last['voc_map']:.1f} | {r['train_s']:.0f} | "
                     + ", ".join(f"{k} {v:.2f}" for k, v in last["terms"].items()) + " |")
    write_text(out / f"{args.name}.md", "\n".join(lines) + "\n")
    with open(out / f"{args.name}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "spec", "epoch", "bbox_map", "ap50", "voc_map", "train_s"])
        for r in rows:
            for c in r["curve"]:
                w.writerow([r["variant"], json.dumps(r["spec"]), c["epoch"], c["bbox_map"], c["ap50"], c["voc_map"],
                            c["train_s"]])
    print("\n".join(lines))


if __name__ == "__main__":
    main()
