"""ONNX Runtime's CUDA and TensorRT providers: clear errors without them, a real run where a GPU has them."""
import pytest
import torch


def _tiny_onnx(tmp_path):
    from slimzoo.export import export_onnx
    from slimzoo.models import create_model

    torch.manual_seed(0)
    model = create_model("mobilenet_v1", num_classes=4, width_mult=0.25).eval()
    return model, export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32))


def test_cli_lists_the_runtimes_of_the_runtime_module():
    from slimzoo import cli, runtime

    assert cli.RUNTIMES == runtime.RUNTIMES


@pytest.mark.parametrize("name", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_missing_gpu_provider_says_what_to_install(tmp_path, name):
    import onnxruntime as ort

    from slimzoo.errors import ConfigError
    from slimzoo.runtime import ORT_PROVIDERS, available_runtimes, onnx_predictor

    if ORT_PROVIDERS[name] in ort.get_available_providers():
        pytest.skip(f"{ORT_PROVIDERS[name]} is installed here")
    _, path = _tiny_onnx(tmp_path)
    assert name not in available_runtimes()
    with pytest.raises(ConfigError, match=f"{ORT_PROVIDERS[name]}.*pip install onnxruntime-gpu"):
        onnx_predictor(path, name)


@pytest.mark.parametrize("name", ["onnxruntime-cuda", "onnxruntime-tensorrt"])
def test_gpu_provider_runs_fp32_and_int8_files(tmp_path, name):
    from slimzoo.bench import benchmark_latency
    from slimzoo.quant import quantize
    from slimzoo.runtime import OnnxPredictor, available_runtimes, onnx_predictor

    if name not in available_runtimes():
        pytest.skip(f"{name}: no GPU provider here")
    model, path = _tiny_onnx(tmp_path)
    x = torch.randn(8, 3, 32, 32)
    assert torch.allclose(onnx_predictor(path, name)(x), model(x).detach(), atol=1e-3)
    int8 = quantize(model, torch.randn(1, 3, 32, 32), [torch.randn(16, 3, 32, 32)], tmp_path / "q.onnx")
    cpu, gpu = OnnxPredictor(int8)(x), onnx_predictor(int8, name)(x)
    assert (cpu.argmax(1) == gpu.argmax(1)).float().mean() >= 0.75
    assert benchmark_latency(int8, (1, 3, 32, 32), threads=(1,), warmup=2, runs=5, runtime=name)["1"]["median"] > 0
