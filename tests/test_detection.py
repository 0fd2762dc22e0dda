"""Detection: synthetic COCO/VOC data and loaders, YOLOv3, loss, NMS, mAP against pycocotools, ONNX/INT8/pruning."""
import json

import numpy as np
import pytest
import torch

from slimzoo.data.detection import load_detection
from slimzoo.data.synth_det import DET_CLASSES, write_synth_det
from slimzoo.errors import DataError
from slimzoo.models import create_model
from slimzoo.tasks import get_task
from slimzoo.tasks.detection import coco_map, postprocess, voc_map


@pytest.fixture(scope="module")
def det_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("det")
    return {fmt: write_synth_det(root / fmt, fmt=fmt, num_train=24, num_val=12, size=64, progress=False)
            for fmt in ("coco", "voc")}


def test_synthetic_detection_data_is_deterministic_and_both_formats_agree(det_data, tmp_path):
    again = write_synth_det(tmp_path / "again", fmt="coco", num_train=24, num_val=12, size=64, progress=False)
    a = (det_data["coco"] / "annotations" / "instances_val2017.json").read_bytes()
    assert a == (again / "annotations" / "instances_val2017.json").read_bytes()
    assert (det_data["coco"] / "val2017" / "val_000003.jpg").read_bytes() == \
        (again / "val2017" / "val_000003.jpg").read_bytes()
    coco, ccls, cf = load_detection(det_data["coco"], "val")
    voc, vcls, vf = load_detection(det_data["voc"], "val")
    assert (cf, vf) == ("coco", "voc") and ccls == vcls == list(DET_CLASSES)
    assert sum(len(s.boxes) for s in coco) >= len(coco)  # at least one object per image on average
    for c, v in zip(coco, voc, strict=True):
        np.testing.assert_allclose(c.boxes, v.boxes, atol=0.06)
        assert (c.labels == v.labels).all()


def test_bad_annotations_name_the_file(det_data, tmp_path):
    import shutil

    voc = tmp_path / "voc"
    shutil.copytree(det_data["voc"], voc)
    xml = voc / "Annotations" / "val_000000.xml"
    good = xml.read_text()
    xml.write_text(good.replace("<name>", "<name>zebra", 1))
    with pytest.raises(DataError, match=r"val_000000.xml: object 0 has class 'zebra"):
        load_detection(voc, "val")
    xml.write_text("<annotation><size>")
    with pytest.raises(DataError, match="val_000000.xml: not valid XML"):
        load_detection(voc, "val")
    xml.write_text(good.replace("<xmax>", "<xmax>-", 1))
    with pytest.raises(DataError, match="val_000000.xml: object 0: box .* no area"):
        load_detection(voc, "val")
    coco = tmp_path / "coco"
    shutil.copytree(det_data["coco"], coco)
    ann = coco / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 99
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2017.json: annotations\[0\] \(id 1\): category_id 99"):
        load_detection(coco, "val")
    data["annotations"][0]["category_id"] = 1
    del data["images"][2]["width"]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2017.json: images\[2\]: missing key 'width'"):
        load_detection(coco, "val")
    ann.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_detection(coco, "val")
    with pytest.raises(DataError, match="not found"):
        load_detection(tmp_path / "nowhere", "val")


def test_coco_map_equals_pycocotools_on_fixed_detections(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    images, anns, dets = [], [], []
    for i in range(1, 21):
        images.append({"id": i, "width": 100, "height": 100})
        for _ in range(rng.integers(1, 4)):
            x, y, w, h = rng.uniform(0, 50, 2).tolist() + rng.uniform(10, 40, 2).tolist()
            c = int(rng.integers(1, 4))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            for _ in range(2):  # a jittered true positive-ish box and a random one
                j = rng.normal(0, 3, 4)
                dets.append({"image_id": i, "category_id": c if rng.random() < 0.8 else 1 + c % 3,
                             "bbox": [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])],
                             "score": float(rng.uniform())})
    cats = [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]
    gt = {"images": images, "annotations": anns, "categories": cats}
    ours = coco_map(gt, dets)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    coco_gt = COCO(str(tmp_path / "gt.json"))
    ev = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "dt.json")), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 5 < ours["bbox_map"] < 95
    assert ours["bbox_map"] == pytest.approx(100 * ev.stats[0], abs=1e-9)
    assert ours["ap50"] == pytest.approx(100 * ev.stats[1], abs=1e-9)


def test_voc_map_hand_computed():
    gt = [{"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([0]), "difficult": np.array([False])}]
    tp = [0, 0, 10, 10]
    fp = [50, 50, 60, 60]
    dets = [{"boxes": np.array([tp, fp], float), "scores": np.array([0.9, 0.8]), "labels": np.array([0, 0])}]
    assert voc_map(gt, dets, 1) == pytest.approx(100.0)
    dets[0]["scores"] = np.array([0.8, 0.9])  # the false positive ranks first: precision 0.5 at recall 1
    assert voc_map(gt, dets, 1) == pytest.approx(50.0)
    gt[0]["difficult"] = np.array([True])  # a difficult object neither counts nor penalises
    assert voc_map(gt, dets, 1) == 0.0


def test_postprocess_nms_keeps_best_box_per_object():
    d = torch.zeros(1, 3, 4 + 2)
    d[0, 0, :4] = torch.tensor([0, 0, 10, 10])
    d[0, 1, :4] = torch.tensor([1, 1, 10, 10])
    d[0, 2, :4] = torch.tensor([30, 30, 40, 40])
    d[0, :, 4] = torch.tensor([0.9, 0.8, 0.7])
    out = postprocess(d)[0]
    assert out["boxes"].shape == (2, 4) and out["scores"].tolist() == pytest.approx([0.9, 0.7])


def test_yolov3_models_shapes_and_sizes():
    m = create_model("yolov3_mobilenet_v1", num_classes=80)
    # near the reference's 95 MB / 162 MB FP32 files at 80 classes
    assert 90e6 < 4 * sum(p.numel() for p in m.parameters()) < 105e6
    r = create_model("yolov3_resnet34", num_classes=80, width_mult=0.25)
    x = torch.randn(2, 3, 64, 64)
    assert r.eval()(x).shape == (2, 3 * (8 * 8 + 4 * 4 + 2 * 2), 84)
    out = r.train()(x)  # training mode: the raw maps and the head's own anchors, for the loss
    assert [t.shape[1:] for t in out["maps"]] == [(255, 2, 2), (255, 4, 4), (255, 8, 8)]
    assert out["anchors"].shape == (9, 2)
    # the backbone keeps the classifier's module names, so a classification checkpoint initialises it
    cls_keys = set(create_model("mobilenet_v1", num_classes=10).state_dict())
    det_keys = {k.removeprefix("backbone.") for k in m.state_dict() if k.startswith("backbone.")}
    assert det_keys == {k for k in cls_keys if k.startswith("features.")}


def test_training_steps_reduce_the_yolo_loss(det_data):
    task = get_task("detection", data_root=det_data["coco"], image_size=64, batch_size=8, num_workers=0)
    torch.manual_seed(0)
    model = create_model("yolov3_mobilenet_v1", num_classes=task.num_classes, width_mult=0.25).train()
    images, targets = next(iter(task.val_loader()))
    targets = [{**t, "boxes": t["boxes"]} for t in targets]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss = task.loss_fn(model(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_onnx_int8_and_pruned_detectors_run_through_the_shared_apis(det_data, tmp_path):
    from slimzoo.export import export_onnx
    from slimzoo.prune import apply_ratios, build_graph, prunable_groups, replay, uniform_ratio
    from slimzoo.quant import quantize
    from slimzoo.runtime import OnnxPredictor, TorchPredictor

    task = get_task("detection", data_root=det_data["voc"], image_size=64, batch_size=4, num_workers=0)
    torch.manual_seed(0)
    model = create_model("yolov3_mobilenet_v1", num_classes=task.num_classes, width_mult=0.25).eval()
    x = task.example_inputs(2)
    fp32 = export_onnx(model, tmp_path / "m.onnx", x)
    torch.testing.assert_close(OnnxPredictor(fp32)(x), model(x), atol=1e-4, rtol=1e-3)
    assert set(task.evaluate(OnnxPredictor(fp32))) >= {"bbox_map", "ap50", "voc_map"}
    int8 = quantize(model, x, task.calibration_batches(8, 4), tmp_path / "q.onnx")
    assert OnnxPredictor(int8)(x).shape == model(x).shape
    assert int8.stat().st_size < 0.35 * fp32.stat().st_size
    # pruning: the three output convs are never pruned; a pruned detector replays from its record
    groups = prunable_groups(model, build_graph(model, x))
    assert not any(g.name.startswith("outputs.") for g in groups)
    ratios, red = uniform_ratio(model, x[:1], 0.4)
    pruned = create_model("yolov3_mobilenet_v1", num_classes=task.num_classes, width_mult=0.25).eval()
    pruned.load_state_dict(model.state_dict())
    rec = apply_ratios(pruned, x[:1], ratios)
    # uniform_ratio alone, at round_to 8; prune() refines the rounding to land within 2 points
    assert abs(red - 0.4) <= 0.05 and pruned(x).shape == model(x).shape
    fresh = replay(create_model("yolov3_mobilenet_v1", num_classes=task.num_classes, width_mult=0.25).eval(),
                   rec.to_dict())
    fresh.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(fresh(x), pruned(x))
    assert "voc_map" in task.evaluate(TorchPredictor(pruned))


def test_classifier_checkpoint_initialises_the_detector_backbone():
    from slimzoo.errors import ConfigError
    from slimzoo.models import load_backbone

    cls = create_model("mobilenet_v1", num_classes=10, width_mult=0.25)
    det = create_model("yolov3_mobilenet_v1", num_classes=6, width_mult=0.25)
    n = load_backbone(det, cls.state_dict())
    assert n == len(det.backbone.state_dict())
    torch.testing.assert_close(det.backbone.features[3].pw[0].weight, cls.features[3].pw[0].weight)
    with pytest.raises(ConfigError, match="no tensor"):
        load_backbone(det, create_model("resnet34", num_classes=10).state_dict())


def test_kmeans_anchors_recover_the_box_shapes_and_are_deterministic():
    from slimzoo.data.detection import kmeans_anchors

    rng = np.random.default_rng(0)
    shapes = np.array([[8, 8], [12, 24], [24, 12], [20, 20], [30, 60], [60, 30], [40, 40], [80, 80], [100, 50]])
    wh = np.concatenate([s * rng.uniform(0.95, 1.05, (60, 2)) for s in shapes])
    a = kmeans_anchors(wh, 9)
    assert (np.diff(a.prod(1)) >= 0).all()  # smallest area first: the stride-8 scale takes the first three
    np.testing.assert_allclose(sorted(map(tuple, a.round())), sorted(map(tuple, shapes.astype(float))), rtol=0.06)
    np.testing.assert_array_equal(a, kmeans_anchors(wh, 9))
    with pytest.raises(DataError, match="too few to fit 9 anchors"):
        kmeans_anchors(wh[:5], 9)


def test_fitted_anchors_travel_with_the_checkpoint_and_the_onnx_file(det_data, tmp_path):
    from slimzoo.checkpoint import load_checkpoint, save_checkpoint
    from slimzoo.errors import CheckpointError
    from slimzoo.export import export_onnx
    from slimzoo.runtime import OnnxPredictor
    from slimzoo.tasks.detection import fit_dataset_anchors

    task = get_task("detection", data_root=det_data["coco"], image_size=64, num_workers=0)
    anchors = fit_dataset_anchors(task)
    assert len(anchors) == 9 and all(0 < w <= 64 and 0 < h <= 64 for w, h in anchors)
    kw = {"anchors": anchors, "anchor_size": 64}
    model = create_model("yolov3_mobilenet_v1", num_classes=6, width_mult=0.25, **kw).eval()
    torch.testing.assert_close(model.anchors * 64, torch.tensor(anchors))
    save_checkpoint(model, tmp_path / "ck", {"model": "yolov3_mobilenet_v1", "num_classes": 6, "width_mult": 0.25,
                                             "model_kwargs": kw})
    loaded, _ = load_checkpoint(tmp_path / "ck")
    x = task.example_inputs(2)
    torch.testing.assert_close(loaded(x), model(x))  # the decoding uses the fitted anchors, not COCO's
    coco = create_model("yolov3_mobilenet_v1", num_classes=6, width_mult=0.25).eval()
    coco.load_state_dict(model.state_dict())
    assert not torch.allclose(coco(x), model(x))
    torch.testing.assert_close(OnnxPredictor(export_onnx(loaded, tmp_path / "m.onnx", x))(x), model(x),
                               atol=1e-4, rtol=1e-3)
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"model": "yolov3_mobilenet_v1", "num_classes": 6,
                                                              "model_kwargs": {"anchorz": anchors}}))
    with pytest.raises(CheckpointError, match="'model_kwargs' do not fit model 'yolov3_mobilenet_v1'"):
        load_checkpoint(tmp_path / "ck")


def test_yolo_loss_extra_positives_and_loss_terms(det_data):
    from slimzoo.tasks.detection import yolo_loss

    task = get_task("detection", data_root=det_data["coco"], image_size=64, batch_size=4, num_workers=0)
    torch.manual_seed(0)
    model = create_model("yolov3_mobilenet_v1", num_classes=task.num_classes, width_mult=0.25).train()
    images, targets = next(iter(task.val_loader()))
    out = model(images)
    terms, more = {}, {}
    one = yolo_loss(out, targets, task.num_classes, terms=terms)
    assert set(terms) == {"obj", "noobj", "xy", "wh", "cls"}
    assert sum(terms.values()) == pytest.approx(one.item(), rel=1e-4)  # the terms add up to the loss
    yolo_loss(out, targets, task.num_classes, anchor_thresh=0.2, terms=more)
    assert more["obj"] > terms["obj"]  # more anchors answer for each object: more positive objectness terms
    task.loss_fn(out, targets)
    assert task.loss_terms["steps"] == 1 and set(task.loss_terms) >= {"obj", "noobj"}
