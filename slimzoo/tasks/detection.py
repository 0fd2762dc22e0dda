"""Object detection: COCO/VOC loaders, the YOLOv3 loss, shared post-processing (NMS) and COCO/VOC mAP.

The model's eval-mode output (PyTorch module or ONNX file alike) is ``[N, M, 4 + C]``: xyxy boxes
in input pixels and per-class scores. :func:`postprocess` (per-class NMS) turns it into
detections for both paths, so a compressed model is evaluated exactly like the FP32 one.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import detection as det_data
from ..models.yolov3 import ANCHOR_MASKS, ANCHORS_608, decode_boxes
from ._base import DatasetTask


def postprocess(decoded: torch.Tensor, *, score_thresh: float = 0.005, iou_thresh: float = 0.45,
                max_det: int = 100, pre_nms: int = 1000) -> list[dict]:
    """Per image: candidates above ``score_thresh`` (a box may count for several classes), per-class NMS."""
    from torchvision.ops import batched_nms

    out = []
    decoded = decoded.float()
    for d in decoded:
        boxes, scores = d[:, :4], d[:, 4:]
        idx, cls = torch.nonzero(scores > score_thresh, as_tuple=True)
        s = scores[idx, cls]
        if s.numel() > pre_nms:
            s, top = s.topk(pre_nms)
            idx, cls = idx[top], cls[top]
        b = boxes[idx]
        keep = batched_nms(b, s, cls, iou_thresh)[:max_det]
        out.append({"boxes": b[keep], "scores": s[keep], "labels": cls[keep]})
    return out


def yolo_loss(outputs, targets: list[dict], num_classes: int, *, ignore_thresh: float = 0.7,
              anchor_thresh: float | None = None, terms: dict | None = None) -> torch.Tensor:
    """The YOLOv3 loss: BCE on centre offsets, L1 on log sizes (both weighted 2 - w*h), BCE objectness
    with predictions that already overlap a ground truth by ``ignore_thresh`` left out of the negatives,
    and BCE classification. Summed over the three scales, averaged over the batch.

    ``outputs`` is what the head returns in training mode, ``{"maps": raw maps, "anchors": its anchors}`` (a bare
    list of maps is read with YOLOv3's COCO anchors); boxes are decoded by the head's own
    :func:`~slimzoo.models.yolov3.decode_boxes`. Each ground truth is assigned to the anchor whose shape fits it best
    (YOLOv3); with ``anchor_thresh`` also to every other anchor it overlaps by more than that (shapes compared at a
    common centre, as YOLOv4 does). ``terms``: a dict in which the per-image loss terms are accumulated."""
    from torchvision.ops import box_iou

    if isinstance(outputs, dict):
        raw, anchors = outputs["maps"], outputs["anchors"].detach().float().cpu()
    else:
        raw, anchors = outputs, torch.tensor(ANCHORS_608, dtype=torch.float32) / 608
    n = raw[0].shape[0]
    ih, iw = targets[0]["input_size"] if targets else (raw[-1].shape[2] * 8, raw[-1].shape[3] * 8)
    anchors_px = anchors * torch.tensor([iw, ih])
    gts = [(b, t["boxes"].float(), t["labels"]) for b, t in enumerate(targets) if len(t["boxes"])]
    if gts:
        bidx = torch.cat([torch.full((len(bx),), b) for b, bx, _ in gts])
        boxes = torch.cat([bx for _, bx, _ in gts])
        labels = torch.cat([lb for _, _, lb in gts])
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)
        ctr = (boxes[:, :2] + boxes[:, 2:]) / 2
        inter = torch.min(wh[:, None], anchors_px[None]).prod(-1)
        shape_iou = inter / (wh.prod(-1)[:, None] + anchors_px.prod(-1)[None] - inter)
        match = F.one_hot(shape_iou.argmax(1), len(anchors_px)).bool()
        if anchor_thresh is not None:
            match |= shape_iou > anchor_thresh
        gt_i, best = torch.nonzero(match, as_tuple=True)  # (ground truth, anchor) pairs
    total = raw[0].new_zeros(())
    for p, mask in zip(raw, ANCHOR_MASKS, strict=True):
        _, _, h, w = p.shape
        p = p.view(n, 3, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2).float()
        sx, sy = iw / w, ih / h
        pos = torch.zeros(n, 3, h, w, dtype=torch.bool)
        txy = torch.zeros(n, 3, h, w, 2)
        twh = torch.zeros(n, 3, h, w, 2)
        tscale = torch.zeros(n, 3, h, w)
        tcls = torch.zeros(n, 3, h, w, num_classes)
        noobj = torch.ones(n, 3, h, w, dtype=torch.bool)
        if gts:
            # ignore: predicted boxes that already overlap some ground truth well are not negatives
            with torch.no_grad():
                decoded = decode_boxes(p.detach(), anchors[list(mask)], (ih, iw))
                for b, bx, _ in gts:
                    pb = decoded[b].reshape(-1, 4)
                    noobj[b] &= (box_iou(pb, bx).max(1).values <= ignore_thresh).view(3, h, w)
            pair = torch.nonzero(torch.isin(best, torch.tensor(mask)), as_tuple=True)[0]
            if len(pair):
                sel = gt_i[pair]
                a = torch.tensor([mask.index(int(k)) for k in best[pair]])
                gi = (ctr[sel, 0] / sx).long().clamp(0, w - 1)
                gj = (ctr[sel, 1] / sy).long().clamp(0, h - 1)
                bb = bidx[sel]
                pos[bb, a, gj, gi] = True
                noobj[bb, a, gj, gi] = False
                txy[bb, a, gj, gi] = torch.stack([ctr[sel, 0] / sx - gi, ctr[sel, 1] / sy - gj], -1).clamp(0, 1)
                twh[bb, a, gj, gi] = torch.log(wh[sel] / anchors_px[best[pair]])
                tscale[bb, a, gj, gi] = 2.0 - wh[sel].prod(-1) / (iw * ih)
                tcls[bb, a, gj, gi] = F.one_hot(labels[sel], num_classes).float()
        obj = p[..., 4]
        parts = {"obj": F.binary_cross_entropy_with_logits(obj[pos], torch.ones_like(obj[pos]), reduction="sum"),
                 "noobj": F.binary_cross_entropy_with_logits(obj[noobj], torch.zeros_like(obj[noobj]),
                                                             reduction="sum")}
        if pos.any():
            ps, sc = p[pos], tscale[pos][:, None]
            parts["xy"] = (F.binary_cross_entropy_with_logits(ps[:, :2], txy[pos], reduction="none") * sc).sum()
            parts["wh"] = ((ps[:, 2:4] - twh[pos]).abs() * sc).sum()
            parts["cls"] = F.binary_cross_entropy_with_logits(ps[:, 5:], tcls[pos], reduction="sum")
        for k, v in parts.items():
            total = total + v
            if terms is not None:
                terms[k] = terms.get(k, 0.0) + float(v.detach()) / max(1, n)
    return total / max(1, n)


def coco_map(gt: dict, detections: list[dict]) -> dict:
    """COCO box AP@[.5:.95], AP50, AP75 and AP by object area (small < 32x32 <= medium < 96x96 <= large, in the
    annotated image's pixels; only the bands that hold objects), in percent, of ``detections`` against the
    COCO-style ``gt`` dict, computed by pycocotools. ``detections``: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return {"bbox_map": 0.0, "ap50": 0.0, "ap75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out = {"bbox_map": 100 * max(0.0, float(ev.stats[0])), "ap50": 100 * max(0.0, float(ev.stats[1])),
           "ap75": 100 * max(0.0, float(ev.stats[2]))}
    for k, name in ((3, "ap_small"), (4, "ap_medium"), (5, "ap_large")):  # COCO's area bands; -1: none of that size
        if ev.stats[k] >= 0:
            out[name] = 100 * float(ev.stats[k])
    return out


def voc_map(gt: list[dict], dets: list[dict], num_classes: int, iou_thresh: float = 0.5) -> float:
    """Pascal VOC mAP (percent) at IoU 0.5, area under the interpolated precision/recall curve
    (VOC2010+); "difficult" ground truths neither count nor penalise. ``gt``/``dets``: per image
    ``{"boxes": [K, 4] xyxy, "labels": [K], "difficult": [K]}`` / ``{"boxes", "scores", "labels"}``."""
    aps = []
    for c in range(num_classes):
        npos = 0
        gts_c = []
        for g in gt:
            m = np.asarray(g["labels"]) == c
            diff = np.asarray(g.get("difficult", np.zeros(len(m), bool)))[m]
            gts_c.append((np.asarray(g["boxes"]).reshape(-1, 4)[m], diff, np.zeros(int(m.sum()), bool)))
            npos += int((~diff).sum())
        cand = [(float(s), i, np.asarray(b)) for i, d in enumerate(dets)
                for b, s, lab in zip(np.asarray(d["boxes"]).reshape(-1, 4), np.asarray(d["scores"]),
                                     np.asarray(d["labels"]), strict=True) if lab == c]
        if npos == 0:
            continue
        cand.sort(key=lambda t: -t[0])
        tp, fp = np.zeros(len(cand)), np.zeros(len(cand))
        for k, (_, i, b) in enumerate(cand):
            boxes, diff, used = gts_c[i]
            if len(boxes):
                ix = np.clip(np.minimum(boxes[:, 2], b[2]) - np.maximum(boxes[:, 0], b[0]), 0, None)
                iy = np.clip(np.minimum(boxes[:, 3], b[3]) - np.maximum(boxes[:, 1], b[1]), 0, None)
                inter = ix * iy
                areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                union = (b[2] - b[0]) * (b[3] - b[1]) + areas - inter
                iou = inter / np.maximum(union, 1e-12)
                j = int(iou.argmax())
                if iou[j] >= iou_thresh:
                    if diff[j]:
                        continue
                    if not used[j]:
                        used[j] = True
                        tp[k] = 1
                        continue
            fp[k] = 1
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / npos
        prec = tp / np.maximum(tp + fp, 1e-12)
        mrec = np.concatenate([[0.0], rec, [1.0]])
        mpre = np.concatenate([[0.0], prec, [0.0]])
        for k in range(len(mpre) - 2, -1, -1):
            mpre[k] = max(mpre[k], mpre[k + 1])
        idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])))
    return 100 * float(np.mean(aps)) if aps else 0.0


def fit_dataset_anchors(task: DetectionTask, k: int = 9) -> list[list[float]]:
    """``k`` anchors (w, h in pixels at ``task.image_size``, rounded to 0.1) fitted by k-means to the training boxes,
    smallest first: the head's three scales take three each, smallest at stride 8."""
    samples, _, _ = det_data.load_detection(task.data_root, "train", task.format)
    anchors = det_data.kmeans_anchors(det_data.box_sizes(samples, task.image_size), k)
    return [[round(float(w), 1), round(float(h), 1)] for w, h in anchors]


@dataclass
class DetectionTask(DatasetTask):
    """A COCO- or VOC-format detection dataset at one square input size; ``evaluate`` takes any predictor."""

    data_root: str | Path
    image_size: int = 416
    batch_size: int = 16
    num_workers: int | None = None  # None: 0 on machines with 2 or fewer CPUs, else up to 4
    format: str | None = None
    score_thresh: float = 0.005
    nms_iou: float = 0.45
    skip_bad_samples: bool = False
    name: str = field(default="detection", init=False)
    anchor_thresh: float | None = 0.2  # extra positives: anchors whose shape IoU with a box exceeds it (see yolo_loss)
    loss_terms: dict = field(default_factory=dict, init=False, repr=False)  # summed per-image terms, and "steps"
    collate_fn = staticmethod(det_data.collate)

    def __post_init__(self):
        self.data_root = Path(self.data_root)
        self._val = None
        self.format = self.format or det_data.detect_format(self.data_root)
        self.metric = "bbox_map" if self.format == "coco" else "voc_map"

    def _split(self, split: str, transform):
        samples, classes, _ = det_data.load_detection(self.data_root, split, self.format)
        return det_data.DetectionDataset(samples, classes, transform)

    def train_dataset(self, augment: bool = True):
        tf = det_data.train_transform(self.image_size) if augment else det_data.eval_transform(self.image_size)
        return self._split("train", tf)

    def val_dataset(self):
        if self._val is None:
            self._val = self._split("val", det_data.eval_transform(self.image_size))
        return self._val

    def loss_fn(self, outputs: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        self.loss_terms["steps"] = self.loss_terms.get("steps", 0) + 1
        return yolo_loss(outputs, targets, self.num_classes, anchor_thresh=self.anchor_thresh, terms=self.loss_terms)

    @torch.no_grad()
    def evaluate(self, predict: Callable[[torch.Tensor], torch.Tensor], *, limit: int | None = None,
                 progress: bool = False) -> dict:
        """COCO box mAP@[.5:.95] and AP50 (pycocotools) and VOC mAP@0.5, in percent, over the validation set."""
        from tqdm import tqdm

        gt_images, gt_anns, coco_dets, voc_gt, voc_dets = [], [], [], [], []
        bar = tqdm(self.val_loader(limit), desc="eval", disable=None if progress else True, leave=False)
        for images, targets in bar:
            dets = postprocess(predict(images), score_thresh=self.score_thresh, iou_thresh=self.nms_iou)
            for d, t in zip(dets, targets, strict=True):
                s = self.val_dataset().samples[t["index"]]  # ground truth as annotated, not as resized
                (oh, ow), (h, w) = t["orig_size"], t["input_size"]
                scale = torch.tensor([ow / w, oh / h, ow / w, oh / h])
                boxes = d["boxes"] * scale
                iid = s.image_id
                gt_images.append({"id": iid, "width": ow, "height": oh})
                for b, lab in zip(s.boxes.tolist(), s.labels.tolist(), strict=True):
                    gt_anns.append({"id": len(gt_anns) + 1, "image_id": iid, "category_id": lab + 1, "iscrowd": 0,
                                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                    "area": (b[2] - b[0]) * (b[3] - b[1])})
                for b, sc, lab in zip(boxes.tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True):
                    coco_dets.append({"image_id": iid, "category_id": lab + 1, "score": sc,
                                      "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
                voc_gt.append({"boxes": s.boxes, "labels": s.labels, "difficult": s.difficult})
                voc_dets.append({k: v.numpy() for k, v in (("boxes", boxes), ("scores", d["scores"]),
                                                           ("labels", d["labels"]))})
        from .. import distributed

        if distributed.active():  # every rank scores the whole set from everyone's detections
            gt_images, gt_anns, coco_dets, voc_gt, voc_dets = (distributed.all_gather_list(x) for x in (
                gt_images, gt_anns, coco_dets, voc_gt, voc_dets))
            for k, a in enumerate(gt_anns):
                a["id"] = k + 1
        gt = {"images": gt_images, "annotations": gt_anns,
              "categories": [{"id": i + 1, "name": n} for i, n in enumerate(self.classes)]}
        res = coco_map(gt, coco_dets)
        res["voc_map"] = voc_map(voc_gt, voc_dets, self.num_classes)
        res["num_images"] = len(gt_images)
        res.update(self.skipped(limit, len(gt_images)))
        return res
