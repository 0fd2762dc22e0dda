"""ONNX files as ``torch.onnx.export``'s default exporter writes them: a fixed batch and size, weights in a
separate file. Every command that reads a user's ONNX file must take them."""
import numpy as np
import pytest
import torch
from torch import nn

from slimzoo.cli import main


def _classifier(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes)).eval()


def _fixed_file(tmp_path, model, batch: int, size: int):
    import onnx

    from slimzoo.export import export_onnx

    inline = export_onnx(model, tmp_path / "inline.onnx", torch.randn(batch, 3, size, size), dynamic=False)
    m = onnx.load(str(inline))
    path = tmp_path / "user.onnx"
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="user.onnx.data", size_threshold=0)
    assert (tmp_path / "user.onnx.data").is_file()
    return path


def test_quant_eval_and_bench_take_a_fixed_batch_file_with_external_weights(tmp_path, synth_cls, capsys):
    from slimzoo.tasks import get_task

    classes = get_task("classification", data_root=synth_cls, image_size=40).num_classes
    path = _fixed_file(tmp_path, _classifier(classes), 1, 40)
    q = tmp_path / "q.onnx"
    common = ["--data", str(synth_cls), "--image-size", "40"]
    assert main(["quant", *common, "--onnx", str(path), "--num-calibration", "16", "--out", str(q)]) == 0
    assert main(["eval", *common, "--onnx", str(q)]) == 0
    assert '"num_images": 48' in capsys.readouterr().out  # every image, in batches of one
    assert main(["bench", "--onnx", str(q), "--threads", "1", "--runs", "2", "--warmup", "0"]) == 0
    assert '"input_size": 40' in capsys.readouterr().out  # the file's size, not the default 224
    assert main(["bench", "--onnx", str(q), "--input-size", "64", "--runs", "1", "--warmup", "0"]) == 2
    assert "takes 40x40 images only" in capsys.readouterr().err


def test_predictor_runs_a_fixed_batch_file_on_any_number_of_images(tmp_path):
    from slimzoo.runtime import OnnxPredictor

    m = _classifier(4)
    predict = OnnxPredictor(_fixed_file(tmp_path, m, 2, 16), threads=1)
    x = torch.randn(5, 3, 16, 16)  # two whole chunks and one image
    with torch.no_grad():
        ref = m(x)
    out = predict(x)
    assert out.shape == (5, 4)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_calibration_runs_in_chunks_of_the_fixed_batch(batch):
    import onnxruntime as ort

    from slimzoo.runtime import run_batch

    import io

    m = _classifier(4)
    buf = io.BytesIO()
    torch.onnx.export(m, (torch.randn(batch, 3, 16, 16),), buf, input_names=["input"], dynamo=False)
    s = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((7, 3, 16, 16)).astype(np.float32)
    for n in (7, 2):  # whole chunks and a part of one; fewer images than the batch
        out = run_batch(s, None, x[:n])[0]
        with torch.no_grad():
            np.testing.assert_allclose(out, m(torch.from_numpy(x[:n])).numpy(), rtol=1e-4, atol=1e-5)
