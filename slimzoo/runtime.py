"""Run models for evaluation: a PyTorch module, or an ONNX file in ONNX Runtime or OpenVINO, behind one callable.

A predictor maps a float32 NCHW batch (torch tensor) to the model's outputs as torch tensors,
so a task's ``evaluate`` runs unchanged on the FP32 network, a pruned one or an INT8 ONNX file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError


class TorchPredictor:
    """Call a PyTorch module in eval mode without gradients."""

    def __init__(self, model: nn.Module, device: str = "cpu"):
        from .training import resolve_device

        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor):
        out = self.model(images.to(self.device))
        if self.device.type == "cpu":
            return out
        return out.cpu() if isinstance(out, torch.Tensor) else type(out)(o.cpu() for o in out)


# ONNX Runtime execution providers by runtime name; the GPU ones need the onnxruntime-gpu package
ORT_PROVIDERS = {"onnxruntime": "CPUExecutionProvider", "onnxruntime-cuda": "CUDAExecutionProvider",
                 "onnxruntime-tensorrt": "TensorrtExecutionProvider"}



def one_line(e: BaseException) -> str:
    """A runtime's error message, all of it, on one line (OpenVINO's first line names only its own source file)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " | ".join(lines) or type(e).__name__

def ort_providers(runtime: str, path: str | Path) -> list:
    """The provider list for ``runtime``, or a ConfigError saying what to install where it is missing.

    TensorRT: INT8 enabled for files with QuantizeLinear nodes (explicit quantization), engines cached
    beside the file; nodes TensorRT cannot take fall back to CUDA, then CPU.
    """
    import onnxruntime as ort

    from .errors import ConfigError

    if runtime not in ORT_PROVIDERS:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    want = ORT_PROVIDERS[runtime]
    if runtime == "onnxruntime":
        return [want]
    have = ort.get_available_providers()
    if want not in have:
        raise ConfigError(f"runtime {runtime!r} needs ONNX Runtime's {want}, which this installation lacks (it has "
                          f"{', '.join(have)}); on a GPU machine: pip uninstall -y onnxruntime && "
                          "pip install onnxruntime-gpu" + (" (and TensorRT's libraries)" if "Tensorrt" in want else ""))
    if runtime == "onnxruntime-cuda":
        return [want, "CPUExecutionProvider"]
    import onnx

    int8 = any(n.op_type == "QuantizeLinear" for n in onnx.load(str(path), load_external_data=False).graph.node)
    cache = Path(path).parent / "trt_cache"
    cache.mkdir(exist_ok=True)
    return [(want, {"trt_int8_enable": int8, "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache)}), "CUDAExecutionProvider", "CPUExecutionProvider"]


def ort_session(path: str | Path, threads: int = 2, optimized_model_path: str | None = None,
                runtime: str = "onnxruntime"):
    """An ONNX Runtime session with ``threads`` intra-op threads and all graph optimizations, on the CPU
    (``runtime="onnxruntime"``) or a GPU (``onnxruntime-cuda``, ``onnxruntime-tensorrt``)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX file not found")
    providers = ort_providers(runtime, path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_model_path:
        so.optimized_model_filepath = str(optimized_model_path)
    try:
        return ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:
        raise CheckpointError(f"{path}: ONNX Runtime cannot load this file: {one_line(e)}") from None


def timing_runner(path: str | Path, x: np.ndarray, runtime: str = "onnxruntime"):
    """A no-argument callable that runs ``path`` on ``x`` at one thread in ``runtime`` (onnxruntime: no spinning
    threads, so files timed in turns do not disturb each other; openvino: float layers in float32), for timing."""
    if runtime == "openvino":
        request = openvino_compiled(path, 1, precision="f32").create_infer_request()
        return lambda: request.infer({0: x})
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    return lambda: s.run(None, feed)


def run_batch(sess, outputs: list[str] | None, x: np.ndarray) -> list[np.ndarray]:
    """``sess.run`` on the batch ``x``, in chunks of the model's batch size where its input fixes one (the
    default ``torch.onnx.export`` writes batch 1), the chunks' outputs concatenated along axis 0 as one run on ``x``
    would give them (the last chunk filled up with copies of the last image, whose outputs are dropped)."""
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    n = len(x)
    if fixed is None or n == fixed:
        return sess.run(outputs, {inp.name: x})
    x = np.concatenate([x, np.repeat(x[-1:], (-n) % fixed, axis=0)])
    chunks = [sess.run(outputs, {inp.name: x[i:i + fixed]}) for i in range(0, len(x), fixed)]
    out = []
    for k in range(len(chunks[0])):
        if not np.ndim(chunks[0][k]):
            out.append(chunks[0][k])
            continue
        v = np.concatenate([c[k] for c in chunks])
        out.append(v[:n] if len(v) == len(x) else v)
    return out


class OnnxPredictor:
    """Run an ONNX file in ONNX Runtime (CPU, or a GPU provider); outputs come back as torch tensors."""

    def __init__(self, path: str | Path, threads: int = 2, runtime: str = "onnxruntime"):
        self.path = Path(path)
        self.session = ort_session(path, threads, runtime=runtime)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, images: torch.Tensor):
        outs = run_batch(self.session, self.output_names, images.float().contiguous().numpy())
        outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)


RUNTIMES = ("onnxruntime", "openvino", "onnxruntime-cuda", "onnxruntime-tensorrt")


def openvino_compiled(path: str | Path, threads: int = 2, precision: str = "f32"):
    """An OpenVINO CPU compiled model of an ONNX file (dynamic shapes kept), ``threads`` inference threads.

    ``precision="f32"`` keeps float layers in float32 (OpenVINO would run them in bf16 on AMX CPUs by
    default); INT8 QDQ layers run in int8 either way.
    """
    try:
        import openvino as ov
    except ImportError:
        from .errors import ConfigError

        raise ConfigError("OpenVINO is not installed: pip install 'slimzoo[openvino]'") from None
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX file not found")
    core = ov.Core()
    try:
        model = core.read_model(str(path))
        return core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_PRECISION_HINT": precision})
    except Exception as e:  # OpenVINO raises plain RuntimeErrors
        raise CheckpointError(f"{path}: OpenVINO cannot load this file: {one_line(e)}") from None


class OpenVinoPredictor:
    """Run an ONNX file in OpenVINO (CPU); outputs come back as torch tensors."""

    def __init__(self, path: str | Path, threads: int = 2):
        self.path = Path(path)
        self.compiled = openvino_compiled(path, threads)
        self.request = self.compiled.create_infer_request()

    def __call__(self, images: torch.Tensor):
        res = self.request.infer([images.float().contiguous().numpy()])
        outs = [torch.from_numpy(res[o].copy()) for o in self.compiled.outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)


def onnx_predictor(path: str | Path, runtime: str = "onnxruntime", threads: int = 2):
    """A predictor for an ONNX file in ``runtime`` (one of :data:`RUNTIMES`)."""
    if runtime in ORT_PROVIDERS:
        return OnnxPredictor(path, threads, runtime)
    if runtime == "openvino":
        return OpenVinoPredictor(path, threads)
    from .errors import ConfigError

    raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def available_runtimes() -> list[str]:
    """The runtimes usable here: ONNX Runtime on the CPU always; OpenVINO when its extra is installed; ONNX
    Runtime's CUDA and TensorRT providers when onnxruntime-gpu finds them."""
    import importlib.util

    import onnxruntime as ort

    have = ort.get_available_providers()
    return (["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
            + [name for name, p in ORT_PROVIDERS.items() if name != "onnxruntime" and p in have])
