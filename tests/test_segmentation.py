"""Segmentation: synthetic scenes, loaders and their errors, mIoU, models, and the shared compression APIs."""
import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from slimzoo.errors import DataError
from slimzoo.models import create_model
from slimzoo.tasks import get_task


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    from slimzoo.data.synth_seg import write_synth_seg

    base = tmp_path_factory.mktemp("seg")
    return {fmt: write_synth_seg(base / fmt, fmt=fmt, num_train=12, num_val=6, width=64, height=32, seed=0,
                                 progress=False) for fmt in ("paddleseg", "cityscapes")}


def _digest(root, pattern):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob(pattern)))).hexdigest()


def test_synthetic_scenes_are_deterministic_and_both_layouts_load_the_same(seg_data, tmp_path):
    from slimzoo.data.synth_seg import SEG_CLASSES, write_synth_seg

    again = write_synth_seg(tmp_path / "again", num_train=12, num_val=6, width=64, height=32, seed=0, progress=False)
    assert _digest(again, "*.png") == _digest(seg_data["paddleseg"], "*.png")
    a = get_task("segmentation", data_root=seg_data["paddleseg"], image_size=32, num_workers=0)
    b = get_task("segmentation", data_root=seg_data["cityscapes"], image_size=32, num_workers=0)
    assert a.format == "paddleseg" and b.format == "cityscapes"
    assert a.classes == b.classes == list(SEG_CLASSES)
    (xa, ya), (xb, yb) = a.val_dataset()[3], b.val_dataset()[3]
    torch.testing.assert_close(xa, xb)
    assert torch.equal(ya, yb) and ya.shape == (32, 64) and xa.shape == (3, 32, 64)
    labels = torch.cat([a.val_dataset()[i][1].flatten() for i in range(6)])
    present = set(labels.unique().tolist())
    assert present <= set(range(len(SEG_CLASSES))) | {255}
    assert {0, 2, 4} <= present  # road, building and sky in every split
    xt, yt = a.train_dataset()[0]
    assert xt.shape == (3, 32, 32) and yt.shape == (32, 32) and yt.dtype == torch.long


def test_bad_segmentation_input_names_the_file(seg_data, tmp_path):
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(seg_data["paddleseg"], root)
    task = get_task("segmentation", data_root=root, image_size=32, num_workers=0)
    first = (root / "val_list.txt").read_text().split()[1]
    Image.new("L", (10, 10)).save(root / first)
    with pytest.raises(DataError, match=r"val_000000\.png: label is 10x10 but its image is 64x32"):
        task.val_dataset()[0]
    Image.fromarray(np.full((32, 64), 9, np.uint8)).save(root / first)
    with pytest.raises(DataError, match=r"class ids \[9\] out of range"):
        task.val_dataset()[0]
    Image.new("RGB", (64, 32)).save(root / first)
    with pytest.raises(DataError, match="single-channel"):
        task.val_dataset()[0]
    (root / first).unlink()
    with pytest.raises(DataError, match="label file not found"):
        task.val_dataset()[0]
    (root / "train_list.txt").write_text("images/x.png\n")
    with pytest.raises(DataError, match=r"train_list\.txt:1: expected"):
        get_task("segmentation", data_root=root, image_size=32).train_dataset()
    with pytest.raises(DataError, match="not a segmentation dataset"):
        get_task("segmentation", data_root=tmp_path / "empty", image_size=32)


def test_miou_from_the_confusion_matrix_hand_computed():
    from slimzoo.tasks.segmentation import confusion_matrix, iou_from_confusion

    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, 4)
    assert cm.sum() == 6  # ignored pixels do not count
    iou = iou_from_confusion(cm)
    torch.testing.assert_close(iou[:3], torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert torch.isnan(iou[3])  # absent from ground truth and predictions: left out of the mean


def test_evaluate_scores_a_perfect_and_a_constant_predictor(seg_data):
    task = get_task("segmentation", data_root=seg_data["paddleseg"], image_size=32, num_workers=0)
    labels = [task.val_dataset()[i][1] for i in range(len(task.val_dataset()))]
    it = iter(labels)

    def perfect(images):  # one-hot of the labels, at half resolution (evaluate upsamples to the label size)
        y = torch.stack([next(it) for _ in range(images.shape[0])]).clamp(max=task.num_classes - 1)
        return F.one_hot(y, task.num_classes).permute(0, 3, 1, 2).float()

    assert task.evaluate(perfect)["miou"] == pytest.approx(100.0)
    road = task.evaluate(lambda x: F.one_hot(torch.zeros(x.shape[0], 32, 64, dtype=torch.long), task.num_classes)
                         .permute(0, 3, 1, 2).float())
    assert road["per_class_iou"]["road"] < 60 and road["per_class_iou"]["sky"] == 0.0


def test_adaptive_pool_matches_torch_for_any_size():
    from slimzoo.models.segmentation import adaptive_avg_pool

    for h, w in ((25, 13), (6, 6), (7, 31), (1, 2)):
        x = torch.randn(2, 3, h, w)
        for bins in (1, 2, 3, 6):
            torch.testing.assert_close(adaptive_avg_pool(x, bins), F.adaptive_avg_pool2d(x, bins))


@pytest.mark.parametrize("name", ["deeplabv3_mobilenet_v2", "deeplabv3_mobilenet_v2_lite", "fast_scnn"])
def test_segmenters_export_with_dynamic_size(name, tmp_path):
    from slimzoo.export import export_onnx
    from slimzoo.runtime import OnnxPredictor

    torch.manual_seed(0)
    model = create_model(name, num_classes=5, width_mult=0.5).eval()
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 64, 96))
    x = torch.randn(2, 3, 97, 75)  # another, odd size: the file is not tied to the export size
    with torch.no_grad():
        ref = model(x)
    assert ref.shape == (2, 5, 97, 75)
    torch.testing.assert_close(OnnxPredictor(path)(x), ref, atol=1e-4, rtol=1e-3)


def test_model_sizes_match_the_reference_configurations():
    n = {m: sum(p.numel() for p in create_model(m, num_classes=19).parameters())
         for m in ("deeplabv3_mobilenet_v2_lite", "fast_scnn")}
    assert 6.5 < 4 * n["deeplabv3_mobilenet_v2_lite"] / 1e6 < 8.5  # the reference's file: 7.4 MB
    assert 1.0e6 < n["fast_scnn"] < 1.3e6  # the paper: 1.11M parameters


def test_deeplab_backbone_is_dilated_and_loads_a_classifier():
    from slimzoo.models import load_backbone

    cls = create_model("mobilenet_v2", num_classes=10, width_mult=0.5)
    seg = create_model("deeplabv3_mobilenet_v2_lite", num_classes=5, width_mult=0.5).eval()
    n = load_backbone(seg, cls.state_dict())
    assert n == len(seg.backbone.state_dict())
    torch.testing.assert_close(seg.backbone.features[5].conv[1][0].weight, cls.features[5].conv[1][0].weight)
    assert seg.backbone(torch.randn(1, 3, 64, 64)).shape[-1] == 4  # output stride 16, not 32


def test_segmenters_quantize_and_prune_through_the_shared_apis(seg_data, tmp_path):
    from slimzoo.prune import apply_ratios, build_graph, prunable_groups, replay, uniform_ratio
    from slimzoo.quant import quantize
    from slimzoo.runtime import OnnxPredictor, TorchPredictor
    from slimzoo.training import TrainConfig, fit

    task = get_task("segmentation", data_root=seg_data["paddleseg"], image_size=32, batch_size=4, num_workers=0)
    torch.manual_seed(0)
    model = create_model("fast_scnn", num_classes=task.num_classes, width_mult=0.5)
    model = fit(model, task.train_loader(), task.loss_fn, TrainConfig(epochs=2, batch_size=4, lr=5e-3),
                progress=False)
    fp32 = task.evaluate(TorchPredictor(model))
    assert set(fp32) >= {"miou", "pixel_acc", "per_class_iou"}
    x = task.example_inputs()
    int8 = quantize(model, x, task.calibration_batches(8, 4), tmp_path / "q.onnx")
    q = task.evaluate(OnnxPredictor(int8))
    assert abs(q["pixel_acc"] - fp32["pixel_acc"]) < 10
    groups = prunable_groups(model, build_graph(model, x))
    assert groups and not any(g.name.startswith("classifier.3") for g in groups)
    ratios, red = uniform_ratio(model, x, 0.4)
    pruned = create_model("fast_scnn", num_classes=task.num_classes, width_mult=0.5).eval()
    pruned.load_state_dict(model.state_dict())
    rec = apply_ratios(pruned, x, ratios)
    # uniform_ratio alone, at round_to 8; prune() refines the rounding to land within 2 points
    assert abs(red - 0.4) <= 0.05 and pruned(x).shape == model(x).shape
    fresh = replay(create_model("fast_scnn", num_classes=task.num_classes, width_mult=0.5).eval(), rec.to_dict())
    fresh.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(fresh(x), pruned(x))
