"""A second runtime: OpenVINO runs the same INT8 QDQ file and agrees with ONNX Runtime."""
import pytest
import torch

pytest.importorskip("openvino")


def test_openvino_and_onnxruntime_agree_on_int8_predictions(tmp_path, trained_classifier):
    from slimzoo.bench import benchmark_latency
    from slimzoo.quant import quantize
    from slimzoo.runtime import OnnxPredictor, OpenVinoPredictor, onnx_predictor

    task, model = trained_classifier
    int8 = quantize(model, task.example_inputs(), task.calibration_batches(32, 16), tmp_path / "q.onnx")
    ort, ov = OnnxPredictor(int8), OpenVinoPredictor(int8)
    agree = total = 0
    for loader in (task.val_loader(), task._loader(task.train_dataset(augment=False), False)):
        for images, _ in loader:
            a, b = ort(images), ov(images)
            assert a.shape == b.shape
            agree += (a.argmax(1) == b.argmax(1)).sum().item()
            total += images.shape[0]
    assert agree / total >= 0.99, f"{agree}/{total} predictions agree"
    assert task.evaluate(onnx_predictor(int8, "openvino"))["num_images"] == len(task.val_dataset())
    lat = benchmark_latency(int8, (1, 3, 64, 64), threads=(1,), warmup=1, runs=3, runtime="openvino")
    assert lat["1"]["median"] > 0


def test_openvino_refuses_a_file_that_is_not_onnx(tmp_path):
    from slimzoo.errors import CheckpointError
    from slimzoo.runtime import OpenVinoPredictor

    p = tmp_path / "x.onnx"
    p.write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="x.onnx: OpenVINO cannot load"):
        OpenVinoPredictor(p)
