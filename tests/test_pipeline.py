"""End to end: train -> eval -> export -> quant -> bench -> zoo rows, on a tiny width and dataset."""
import json

import numpy as np
import pytest
import torch

from slimzoo.zoo import Zoo, load_recipes, render_zoo_md

ROWS = ["cls-mobilenet_v1-none", "cls-mobilenet_v1-quant"]
REQUIRED = {"id", "task", "model", "dataset", "strategy", "metric", "size_mb", "latency_ms", "flops", "params",
            "input_size", "file", "seconds"}


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    zoo = Zoo(out, profile_name="smoke", progress=False)
    zoo.run(ROWS)
    return zoo, out


def test_zoo_writes_rows_with_required_fields(zoo_run):
    _, out = zoo_run
    res = json.loads((out / "results.json").read_text())
    rows = {r["id"]: r for r in res["rows"]}
    assert set(rows) == set(ROWS)
    for r in rows.values():
        assert REQUIRED <= set(r)
        assert set(r["latency_ms"]) == {"1", "2", "4"} and all(v > 0 for v in r["latency_ms"].values())
        assert 0 <= r["metric"]["value"] <= 100 and r["metric"]["name"] == "top1"
        assert r["peak_rss_mb"] > 50  # this row's own peak memory (torch alone needs more)
        # each stage and the total are rounded to 0.1 s: allow their rounding, 0.05 s apiece
        assert 0 < sum(r["stage_seconds"].values()) <= r["seconds"] + 0.05 * (len(r["stage_seconds"]) + 1)
    fp32, int8 = rows["cls-mobilenet_v1-none"], rows["cls-mobilenet_v1-quant"]
    assert int8["metric"]["delta"] == pytest.approx(int8["metric"]["value"] - fp32["metric"]["value"], abs=1e-3)
    assert int8["file"].endswith("model_int8.onnx") and fp32["file"].endswith("model_fp32.onnx")
    # where a row's time went: the FP32 row trained its model (and drew the dataset), the INT8 row quantized it
    assert {"data", "train", "export", "evaluate", "benchmark"} <= set(fp32["stage_seconds"])
    assert {"quantize", "evaluate", "benchmark"} <= set(int8["stage_seconds"]) and "train" not in int8["stage_seconds"]
    md = (out / "ZOO.md").read_text()
    assert "| mobilenet_v1 | quant (PTQ) | synth-cls |" in md and "Latency T1 / T2 / T4" in md
    assert "| classification | 2 |" in md.split("Where the time went")[1]


def test_int8_file_is_small_and_its_accuracy_is_measured(zoo_run, tmp_path):
    from slimzoo.quant import quantize
    from slimzoo.runtime import OnnxPredictor, ort_session

    zoo, out = zoo_run
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    int8_row = rows["cls-mobilenet_v1-quant"]
    # width 0.25 at 64 px is tiny, so per-tensor metadata weighs more than at full size (0.24-0.30 there)
    assert int8_row["size_mb"] <= 0.4 * rows["cls-mobilenet_v1-none"]["size_mb"]

    model, task = zoo.baseline("cls-mobilenet_v1-none")
    # the reported accuracy equals an independent count over the INT8 file's predictions
    sess = ort_session(int8_row["file"], 2)
    correct = total = 0
    for images, targets in task.val_loader():
        logits = sess.run(None, {"input": images.numpy()})[0]
        correct += int((logits.argmax(1) == targets.numpy()).sum())
        total += len(targets)
    assert int8_row["metric"]["value"] == pytest.approx(100 * correct / total, abs=1e-3)

    # perturbing the weights changes the measured INT8 accuracy: it is not an estimate
    with torch.no_grad():
        model.fc.bias.fill_(0)
        model.fc.bias[3] = 1e3  # always predict class 3
    path = quantize(model, task.example_inputs(), task.calibration_batches(32), tmp_path / "p.onnx")
    perturbed = task.evaluate(OnnxPredictor(path))["top1"]
    share3 = 100 * np.mean([s.label == 3 for s in task.val_dataset().samples])
    assert perturbed == pytest.approx(share3, abs=1e-6)


def test_zoo_rerun_reuses_finished_rows(zoo_run):
    _, out = zoo_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "rows").glob("*.json")}
    again = Zoo(out, profile_name="smoke", progress=False)
    again.run(ROWS)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "rows").glob("*.json")}
    assert before == after


def test_recipes_cover_the_reference_quant_rows():
    recipes = load_recipes()
    for m in ("mobilenet_v1", "mobilenet_v2", "resnet50"):
        assert recipes[f"cls-{m}-none"]["strategy"] == "none"
        assert recipes[f"cls-{m}-quant"]["base"] == f"cls-{m}-none"


def test_render_zoo_md_signs_deltas_and_compares_with_the_reference():
    base = {"id": "cls-m-none", "task": "classification", "model": "m", "strategy": "none", "dataset": "d",
            "metric": {"name": "top1", "value": 80.5, "delta": 0.0}, "size_mb": 4.0,
            "latency_ms": {"1": 5.0, "2": 3.0, "4": 2.0}, "flops": 1e9, "params": 1e6, "eval_size": [64, 64],
            "input_size": [224, 224]}
    row = base | {"id": "cls-m-quant", "strategy": "quant", "base": "cls-m-none", "size_mb": 1.0,
                  "metric": {"name": "top1", "value": 80.0, "delta": -0.5},
                  "latency_ms": {"1": 2.0, "2": 1.5, "4": 1.2}}
    ref = {"cls-m-quant": {"metric": 70.18, "delta": -0.81, "size_mb": 4.4, "base_size_mb": 17, "latency_ms": 56.53,
                           "base_latency_ms": 88.50}}
    md = render_zoo_md([base, row], {"profile": "x", "machine": {}}, ref)
    line = next(ln for ln in md.splitlines() if ln.startswith("| m | quant"))
    assert "| 80.00 (-0.50) |" in line and "| 2.00 / 1.50 / 1.20 |" in line
    assert "| 0.25x |" in line and "| 2.50x |" in line  # ours: size ratio and T1 speed-up against FP32
    assert "| 70.18 (-0.81) | 4.4 MB (0.26x) | 1.57x |" in line  # the reference's, beside ours
    assert "GPU" not in md  # no GPU column without GPU figures
    row["latency_ms_gpu"] = {"onnxruntime-cuda": 0.61, "onnxruntime-tensorrt": 0.34}  # as measured on a GPU machine
    md = render_zoo_md([base, row], {"profile": "x", "machine": {}}, ref)
    assert "| GPU CUDA / TensorRT (ms) |" in md
    assert "| 2.50x | 0.61 / 0.34 |" in next(ln for ln in md.splitlines() if ln.startswith("| m | quant"))
    assert "| 1.00x | - / - |" in next(ln for ln in md.splitlines() if ln.startswith("| m | none"))


@pytest.mark.slow
def test_smoke_profile_runs_every_row(zoo_run):
    _, out = zoo_run  # the same profile and folder: the fixture's rows are reused
    Zoo(out, profile_name="smoke", progress=False).run()
    res = json.loads((out / "results.json").read_text())
    assert res["version"] == 3
    assert {r["id"] for r in res["rows"]} == set(load_recipes())
    by_id = {r["id"]: r for r in res["rows"]}
    trains_after_root = {"cls-mobilenet_v1-prune30", "cls-mobilenet_v1-prune50", "cls-mobilenet_v1-prune50-quant",
                         "cls-mobilenet_v1-qat", "cls-mobilenet_v2-qat", "cls-resnet50-qat", "cls-resnet50-prune50",
                         "seg-fast_scnn-prune48"}
    for r in res["rows"]:
        # every row that trains after its FP32 root carries the equally trained FP32 control; no other row does
        assert ("control" in r) == (r["strategy"] in ("prune", "qat") or r["id"] in trains_after_root), r["id"]
        if "control" in r:
            c = r["control"]
            assert c["delta"] == pytest.approx(r["metric"]["value"] - c["value"], abs=1e-3)
        if r["strategy"] in ("quant", "qat") and by_id[r["base"]]["strategy"] == "none":
            # tiny widths: metadata and the float parts (a segmenter's upsampling) weigh more
            assert r["size_mb"] < (0.6 if r["task"] == "segmentation" else 0.45) * by_id[r["base"]]["size_mb"]
        elif r["strategy"] in ("quant", "qat"):  # INT8 of a pruned tiny model: metadata weighs even more
            assert r["size_mb"] < by_id[r["base"]]["size_mb"]
        if r["strategy"] == "prune":  # within 2 points of the target, or the summary says by how much it missed
            reached = 1 - r["flops"] / by_id[r["base"]]["flops"]
            target = r["pruning"]["target_flops_reduction"]
            assert abs(reached - target) <= 0.021 or "target_missed_by" in r["pruning"], r["pruning"]
            assert r["size_mb"] < by_id[r["base"]]["size_mb"]
    for r in res["rows"]:  # every FP32 row the zoo trained carries its validation curve, one point per epoch
        if r["strategy"] == "none":
            curve = r["curve"]
            assert [c["epoch"] for c in curve] == list(range(1, len(curve) + 1)) and curve
            assert all(0 <= c["value"] <= 100 for c in curve)
            if r["task"] == "detection":
                assert set(curve[-1]["loss_terms"]) >= {"obj", "noobj"} and "ap50" in curve[-1]["metrics"]
    md = (out / "ZOO.md").read_text()
    assert "## Baseline training curves" in md
    assert "<table" in (out / "report.html").read_text() and 'id="curves"' in (out / "report.html").read_text()
    assert "quant (QAT)" in md and "| mobilenet_v1 | prune -50% + quant |" in md
    assert "| vs control |" in md and "(control " in md


def test_zoo_takes_your_own_weights_and_settings(tmp_path):
    from slimzoo.cli import main
    from slimzoo.models import create_model
    from slimzoo.storage import save_state_dict

    torch.manual_seed(0)
    w = save_state_dict(create_model("mobilenet_v1", num_classes=10, width_mult=0.25), tmp_path / "mine.safetensors")
    out = tmp_path / "zoo"
    assert main(["zoo", "--out", str(out), "--profile", "smoke", "--rows", "cls-mobilenet_v1-quant",
                 "--weights", f"cls-mobilenet_v1-none={w}", "--set", "image_size=48",
                 "--set", "quant.num_calibration=16"]) == 0
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["cls-mobilenet_v1-none"]["eval_size"] == [48, 48]
    assert not (out / "models" / "cls-mobilenet_v1-none").exists()  # nothing trained: your weights were used
    # a prune row whose FP32 base is your weights (its model key comes from the weights file, not a checkpoint)
    assert main(["zoo", "--out", str(out), "--profile", "smoke", "--rows", "cls-mobilenet_v1-prune30",
                 "--weights", f"cls-mobilenet_v1-none={w}", "--set", "image_size=48",
                 "--set", "prune.method=uniform"]) == 0
    rows = {r["id"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["cls-mobilenet_v1-prune30"]["pruning"]["method"] == "uniform"
    assert "control" in rows["cls-mobilenet_v1-prune30"]
    assert main(["zoo", "--out", str(out), "--weights", "cls-mobilenet_v1-none"]) == 2


def test_benchmark_time_budget_keeps_at_least_min_runs(tmp_path):
    from slimzoo.bench import benchmark_latency
    from slimzoo.export import export_onnx
    from slimzoo.models import create_model

    model = create_model("mobilenet_v1", num_classes=4, width_mult=0.25).eval()
    path = export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32))
    full = benchmark_latency(path, (1, 3, 32, 32), threads=(1,), warmup=1, runs=12)
    assert full["1"]["runs"] == 12
    capped = benchmark_latency(path, (1, 3, 32, 32), threads=(1, 2), warmup=3, runs=12, min_runs=4, max_seconds=0)
    assert [capped[t]["runs"] for t in ("1", "2")] == [4, 4]  # budget spent at once: only the minimum
    assert capped["1"]["median"] > 0 and capped["1"]["p90"] >= capped["1"]["median"]
