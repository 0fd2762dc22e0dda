import subprocess
import sys

import pytest

from slimzoo.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "slimzoo.cli", *args], capture_output=True, text=True)


def test_help_lists_commands():
    r = _run("--help")
    assert r.returncode == 0
    for cmd in ("train", "eval", "export", "quant", "bench", "zoo", "data"):
        assert cmd in r.stdout


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    code = main(["eval", "--data", str(tmp_path / "nope"), "--model", "mobilenet_v1", "--image-size", "32"])
    assert code == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_not_onnx_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"definitely not onnx")
    assert main(["bench", "--onnx", str(bad), "--runs", "1", "--warmup", "0"]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err


@pytest.mark.slow
def test_train_export_quant_bench_cli(tmp_path, synth_cls, capsys):
    ck = tmp_path / "ck"
    common = ["--data", str(synth_cls), "--image-size", "32", "--batch-size", "16", "--workers", "0"]
    assert main(["train", *common, "--model", "mobilenet_v2", "--width-mult", "0.25", "--epochs", "1",
                 "--out", str(ck)]) == 0
    assert (ck / "model.safetensors").is_file() and (ck / "config.json").is_file()
    assert main(["export", "--checkpoint", str(ck), "--image-size", "32", "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["quant", *common, "--checkpoint", str(ck), "--num-calibration", "16",
                 "--out", str(tmp_path / "q.onnx")]) == 0
    assert main(["bench", "--onnx", str(tmp_path / "q.onnx"), "--input-size", "32", "--runs", "2", "--warmup", "1",
                 "--threads", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "b.json").is_file()
    assert '"top1"' in capsys.readouterr().out


@pytest.mark.slow
def test_sensitivity_then_prune_then_quant_cli(tmp_path, synth_cls, capsys):
    import json

    from slimzoo.checkpoint import load_checkpoint

    ck = tmp_path / "ck"
    common = ["--data", str(synth_cls), "--image-size", "32", "--batch-size", "16", "--workers", "0"]
    assert main(["train", *common, "--model", "mobilenet_v1", "--width-mult", "0.5", "--epochs", "1",
                 "--out", str(ck)]) == 0
    sens = tmp_path / "sens.json"
    assert main(["sensitivity", *common, "--checkpoint", str(ck), "--eval-images", "32", "--out", str(sens)]) == 0
    data = json.loads(sens.read_text())
    assert data["evaluations"] <= data["reference_evaluations"] / 3 and sens.with_suffix(".png").is_file()
    pruned = tmp_path / "pruned"
    assert main(["prune", *common, "--checkpoint", str(ck), "--flops-reduction", "0.3", "--sensitivity", str(sens),
                 "--epochs", "1", "--out", str(pruned)]) == 0
    assert json.loads(sens.read_text()) == data  # a finished analysis is reused, not redone
    _, cfg = load_checkpoint(pruned)
    assert abs(cfg["prune_info"]["flops_reduction"] - 0.3) <= 0.02 and cfg["pruning"]["steps"]
    assert main(["quant", *common, "--checkpoint", str(pruned), "--num-calibration", "16",
                 "--out", str(tmp_path / "pq.onnx")]) == 0
    # a sensitivity file of other weights is refused, not silently used
    assert main(["prune", *common, "--model", "mobilenet_v1", "--width-mult", "0.5", "--num-classes", "10",
                 "--flops-reduction", "0.3", "--sensitivity", str(sens), "--out", str(tmp_path / "x")]) == 2
    assert "other weights" in capsys.readouterr().err


@pytest.mark.slow
def test_detection_cli_synth_train_eval_quant(tmp_path, capsys):
    import json

    import torch

    data = tmp_path / "det"
    assert main(["data", "synth", "--task", "det", "--format", "voc", "--out", str(data), "--num-train", "16",
                 "--num-val", "8", "--size", "64"]) == 0
    assert (data / "Annotations").is_dir() and (data / "labels.txt").is_file()
    common = ["--data", str(data), "--image-size", "64", "--batch-size", "8", "--workers", "0"]
    cls = tmp_path / "cls"
    from slimzoo.checkpoint import save_checkpoint
    from slimzoo.models import create_model

    save_checkpoint(create_model("mobilenet_v1", num_classes=10, width_mult=0.25), cls,
                    {"model": "mobilenet_v1", "num_classes": 10, "width_mult": 0.25})
    ck = tmp_path / "ck"
    assert main(["train", *common, "--model", "yolov3_mobilenet_v1", "--width-mult", "0.25", "--epochs", "1",
                 "--backbone-weights", str(cls), "--anchors", "kmeans", "--out", str(ck)]) == 0
    out = capsys.readouterr().out
    assert "backbone initialised" in out and '"voc_map"' in out and "fitted by k-means" in out
    # the fitted anchors are recorded in the checkpoint, so everything that loads it rebuilds the same head
    from slimzoo.checkpoint import load_checkpoint
    from slimzoo.tasks import get_task
    from slimzoo.tasks.detection import fit_dataset_anchors

    anchors = fit_dataset_anchors(get_task("detection", data_root=data, image_size=64, num_workers=0))
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["model_kwargs"] == {"anchors": anchors, "anchor_size": 64}
    model, _ = load_checkpoint(ck)
    assert torch.allclose(model.anchors * 64, torch.tensor(anchors))
    assert main(["quant", *common, "--checkpoint", str(ck), "--num-calibration", "8",
                 "--out", str(tmp_path / "q.onnx")]) == 0
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{"):])  # after "wrote ..." and the integer-op / speed check line
    assert {"bbox_map", "ap50", "voc_map"} <= set(res)


@pytest.mark.slow
def test_segmentation_cli_synth_train_prune_eval(tmp_path, capsys):
    import json

    from slimzoo.cli import task_of_folder

    data = tmp_path / "seg"
    assert main(["data", "synth", "--task", "seg", "--format", "cityscapes", "--out", str(data), "--num-train", "8",
                 "--num-val", "4", "--seg-size", "32x64"]) == 0
    assert task_of_folder(data) == "segmentation" and (data / "gtFine" / "val").is_dir()
    assert main(["data", "synth", "--task", "seg", "--format", "voc", "--out", str(tmp_path / "x")]) == 2
    assert "not a seg format" in capsys.readouterr().err
    common = ["--data", str(data), "--image-size", "32", "--batch-size", "4", "--workers", "0"]
    ck = tmp_path / "ck"
    assert main(["train", *common, "--model", "fast_scnn", "--width-mult", "0.5", "--epochs", "1",
                 "--out", str(ck)]) == 0
    assert '"miou"' in capsys.readouterr().out
    assert main(["prune", *common, "--checkpoint", str(ck), "--flops-reduction", "0.3", "--uniform", "--epochs", "1",
                 "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    assert main(["eval", *common, "--eval-size", "64x128", "--checkpoint", str(tmp_path / "p")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["num_images"] == 4 and set(res["per_class_iou"]) == {"road", "sidewalk", "building", "vegetation",
                                                                     "sky", "pole", "car", "person"}
