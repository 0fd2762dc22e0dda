"""What an INT8 file becomes in the runtime: which layers run as integer kernels, and whether it is faster.

A QDQ file only *asks* for integer kernels; ONNX Runtime grants them where its fusions match. A conv it
cannot fuse runs in float on dequantized int8 weights, slower than in the FP32 file, and nothing fails.
``integer_layers`` reads the graph ONNX Runtime actually runs; ``check_int8`` adds the INT8 / FP32
latency at one thread, measured side by side, and says plainly when the file is not faster.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .stem import MIN_GAIN

# integer kernels of ONNX Runtime's CPU provider for weighted layers
INTEGER_OPS = {"QLinearConv", "QLinearConvTranspose", "ConvInteger", "QGemm", "QLinearMatMul", "MatMulInteger",
               "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention"}
FLOAT_OPS = {"Conv", "ConvTranspose", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}


@dataclass
class Int8Check:
    """The integer-op count of an INT8 file and (when measured) its latency against the FP32 file."""

    integer: int  # weighted layers (Conv, ConvTranspose, Gemm, MatMul with constant weights) run as integer ops
    total: int  # weighted layers in the file
    float_layers: list[str] = field(default_factory=list)  # weighted layers left in float, by node name
    activation_matmuls: int = 0  # MatMul between two activations (attention), left in float by design
    fp32_ms: float | None = None  # median latency at one thread
    int8_ms: float | None = None
    # PTQConfig.stem == "auto": the first conv's measured choice {layers, chosen, int8_stem_ms, float_stem_ms}
    stem: dict | None = None
    # PTQConfig.grouped_convs == "auto": per grouped (or narrow depthwise) conv {int8_ms, float_ms, chosen}, the
    # ones kept float, untimed
    grouped: dict | None = None
    # PTQConfig.pad_channels == "auto": the depthwise convs widened to the int8 kernel's block (quant.pad), timings
    widened: dict | None = None
    kept_float: int = 0  # weighted layers left in float on purpose (keep_fp32, a float stem): not a problem
    calibration: dict | None = None  # calibration="auto": {chosen, agreement_pct, output_sqnr_db per method, images}
    runtime: str = "onnxruntime"  # where the layers were counted and the files timed: the file's target runtime

    @property
    def speedup(self) -> float | None:
        return None if not self.int8_ms else self.fp32_ms / self.int8_ms

    @property
    def faster(self) -> bool | None:
        return None if self.speedup is None else self.speedup > 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["speedup"] = None if self.speedup is None else round(self.speedup, 3)
        return d

    def summary(self) -> str:
        s = f"{self.integer}/{self.total} weighted layers run as integer ops in {RUNTIME_NAMES[self.runtime]}"
        if self.activation_matmuls:
            s += f" ({self.activation_matmuls} activation x activation MatMul left in float)"
        if self.speedup is not None:
            s += f"; INT8 {self.int8_ms:.2f} ms vs FP32 {self.fp32_ms:.2f} ms at 1 thread ({self.speedup:.2f}x)"
        if self.calibration:
            c = self.calibration
            s += (f"; {c['chosen']} ranges (agreement with FP32 {c['agreement_pct']} %, output SQNR "
                  f"{c['output_sqnr_db']} dB on {c['images']} calibration images)")
        if self.stem:
            st = self.stem
            s += (f"; first conv kept in {st['chosen']} (measured {st['int8_stem_ms']:.2f} ms with it in int8, "
                  f"{st['float_stem_ms']:.2f} ms in float; float, which does not round the image, unless int8 is "
                  f"at least {MIN_GAIN:.0%} faster)")
        if self.grouped:
            g = self.grouped
            s += (f"; {len(g['float'])} of {len(g['layers']) + len(g['untimed'])} grouped or narrow depthwise convs "
                  f"kept in float "
                  f"(each timed in int8 and in float, {g['seconds']:.1f} s; float where at least "
                  f"{g['min_gain']:.0%} faster)")
        if self.widened and self.widened.get("narrow_ms"):
            w = self.widened
            s += (f"; {len(w['widened'])} depthwise channel set(s) off the int8 kernel's block of {w['block']} "
                  f"{'widened' if w['chosen'] == 'widened' else 'left narrow'} (measured {w['widened_ms']:.2f} ms "
                  f"widened, {w['narrow_ms']:.2f} ms narrow)")
        return s

    def problems(self) -> list[str]:
        """Plain sentences for what is wrong with the file, each with what to do; empty when nothing is."""
        out = []
        if len(self.float_layers) > self.kept_float:
            names = ", ".join(self.float_layers[:8]) + (" ..." if len(self.float_layers) > 8 else "")
            kept = f", {self.kept_float} of them on purpose" if self.kept_float else ""
            out.append(f"{len(self.float_layers)} weighted layer(s) still run in float{kept}: {names}. They read int8 "
                       "weights through DequantizeLinear, slower than in the FP32 file; leave them in FP32 "
                       "explicitly (keep_fp32 / --keep-fp32) or report the pattern that blocks them")
        if self.faster is False:
            other = "onnxruntime" if self.runtime == "openvino" else "openvino"
            out.append(f"the INT8 file is not faster than FP32 at 1 thread in {RUNTIME_NAMES[self.runtime]} "
                       f"({self.int8_ms:.2f} vs {self.fp32_ms:.2f} ms): the model is too small for int8 to pay for "
                       "its conversions, or float ops between quantized layers dominate; deploy the FP32 file, or "
                       f"try --target {other}")
        return out


def _optimized_graph(path: str | Path):
    """The graph ONNX Runtime's CPU provider runs for ``path`` (its QDQ fusions applied, layouts untouched)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(Path(d) / "opt.onnx")
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(str(Path(d) / "opt.onnx")).graph


def integer_layers(int8_path: str | Path) -> Int8Check:
    """Count the weighted layers of an INT8 file that ONNX Runtime runs as integer ops."""
    g = _optimized_graph(int8_path)
    consts = {i.name for i in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant"}
    deq_const = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] in consts}
    weights = consts | deq_const
    integer, floats, act_mm = 0, [], 0
    for n in g.node:
        if n.op_type in INTEGER_OPS:
            integer += 1
        elif n.op_type in FLOAT_OPS:
            w = 0 if n.op_type in ("Gemm", "FusedGemm") and len(n.input) > 1 and n.input[0] in weights else 1
            if len(n.input) > w and n.input[w] in weights:
                floats.append(n.name)
            elif n.op_type in ("MatMul", "FusedMatMul"):
                act_mm += 1
    return Int8Check(integer=integer, total=integer + len(floats), float_layers=floats, activation_matmuls=act_mm)


RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
# OpenVINO's names for weighted layers in its runtime model; MatMul there is activation x activation (attention)
OPENVINO_WEIGHTED = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected"}


def integer_layers_openvino(int8_path: str | Path) -> Int8Check:
    """Count the weighted layers of an INT8 file that OpenVINO's CPU plugin runs in int8 (its runtime model's
    precision per layer)."""
    from ..runtime import openvino_compiled

    integer, floats, act_mm = 0, [], 0
    for op in openvino_compiled(int8_path, 1, precision="f32").get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else ""
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
        if kind in OPENVINO_WEIGHTED:
            if precision in ("i8", "u8"):
                integer += 1
            else:
                floats.append(op.get_friendly_name())
        elif kind == "MatMul" and precision not in ("i8", "u8"):
            act_mm += 1
    return Int8Check(integer=integer, total=integer + len(floats), float_layers=floats, activation_matmuls=act_mm,
                     runtime="openvino")


def _median_ms(run, runs: int, budget_s: float) -> float:
    for _ in range(3):
        run()
    times, start = [], time.perf_counter()
    while len(times) < runs and (len(times) < 5 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def input_shape(path: str | Path, default_hw: tuple[int, int] = (224, 224)) -> tuple[int, ...]:
    """A concrete input shape for an ONNX file: batch 1 unless the file fixes another, named sizes of dynamic
    spatial dims by ``default_hw``."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.dim_value > 0 else 0 for d in dims]
    if shape and not shape[0]:
        shape[0] = 1
    for k, hw in zip(range(len(shape) - 2, len(shape)), default_hw):
        if k >= 1 and shape[k] == 0:
            shape[k] = hw
    return tuple(s or 1 for s in shape)


def check_int8(fp32_path: str | Path, int8_path: str | Path, shape: tuple[int, ...] | None = None, *,
               runs: int = 20, budget_s: float = 2.0, runtime: str = "onnxruntime") -> Int8Check:
    """Integer-op count of ``int8_path`` in ``runtime`` (onnxruntime or openvino: the runtime the file was placed
    for) and its T1 latency against ``fp32_path`` there, measured interleaved (FP32, INT8, FP32, INT8) so that load
    on the machine falls on both alike."""
    check = integer_layers_openvino(int8_path) if runtime == "openvino" else integer_layers(int8_path)
    fixed = input_shape(fp32_path)
    shape = (fixed[0], *shape[1:]) if shape and fixed[0] != 1 else (shape or fixed)  # a file's fixed batch holds
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    from ..runtime import timing_runner

    runners = [timing_runner(p, x, runtime) for p in (fp32_path, int8_path)]
    fp, q = [], []
    for _ in range(2):
        fp.append(_median_ms(runners[0], runs // 2, budget_s / 4))
        q.append(_median_ms(runners[1], runs // 2, budget_s / 4))
    check.fp32_ms, check.int8_ms = round(min(fp), 3), round(min(q), 3)
    return check
