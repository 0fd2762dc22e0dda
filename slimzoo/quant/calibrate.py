"""Calibration: observe activation ranges by running the FP32 ONNX model on sample inputs."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import ConfigError

METHODS = ("minmax", "percentile")


class RangeObserver:
    """Per-tensor range of every observed batch: running min/max, or a percentile of |x| per batch.

    ``percentile`` averages each batch's (100-p)/p percentiles, which clips rare outliers.
    """

    def __init__(self, method: str = "minmax", percentile: float = 99.99):
        if method not in METHODS:
            raise ConfigError(f"unknown calibration method {method!r}; choose from {METHODS}")
        self.method, self.percentile = method, percentile
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self._sum: dict[str, list] = {}

    def observe(self, name: str, x: np.ndarray) -> None:
        x = x.astype(np.float32, copy=False)
        if self.method == "minmax":
            self.lo[name] = min(self.lo.get(name, np.inf), float(x.min()))
            self.hi[name] = max(self.hi.get(name, -np.inf), float(x.max()))
        else:
            lo, hi = np.percentile(x, [100 - self.percentile, self.percentile])
            s = self._sum.setdefault(name, [0.0, 0.0, 0])
            s[0], s[1], s[2] = s[0] + float(lo), s[1] + float(hi), s[2] + 1
            self.lo[name], self.hi[name] = s[0] / s[2], s[1] / s[2]

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {k: (self.lo[k], self.hi[k]) for k in self.lo}


def collect_ranges(model, tensors: list[str], batches: Iterable, *, method: str = "minmax",
                   percentile: float = 99.99, threads: int = 2) -> dict[str, tuple[float, float]]:
    """Run ``model`` (an FP32 ``onnx.ModelProto``) on ``batches`` and return each tensor's (lo, hi)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    graph_inputs = {i.name for i in m.graph.input}
    for t in tensors:
        if t not in existing and t not in graph_inputs:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    # no graph rewrites, so every named intermediate tensor exists as it does in the file
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    input_name = sess.get_inputs()[0].name
    wanted = [t for t in tensors if t not in graph_inputs]
    obs = RangeObserver(method, percentile)
    n = 0
    for batch in batches:
        x = batch.numpy() if hasattr(batch, "numpy") else np.asarray(batch)
        x = x.astype(np.float32)
        outs = sess.run(wanted, {input_name: x})
        for t, v in zip(wanted, outs):
            obs.observe(t, v)
        if input_name in tensors:
            obs.observe(input_name, x)
        n += len(x)
    if n == 0:
        raise ConfigError("calibration received no images; check the calibration dataset")
    return obs.ranges()
