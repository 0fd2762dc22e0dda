"""Calibration: observe activation ranges by running the FP32 ONNX model on sample inputs.

Methods (each chooses a [lo, hi] per tensor for the uint8 grid):

- ``minmax``: the observed extremes; nothing is clipped, rounding error is largest.
- ``percentile``: the mean over batches of the (100-p)th and p-th percentiles.
- ``mse``: the range, among shrunk versions of [min, max], that minimises the expected
  squared quantization error (rounding inside, clipping outside) under the histogram.
- ``entropy``: TensorRT's KL-divergence threshold on the histogram of a non-negative
  tensor (post-ReLU activations); tensors with negative values use ``mse``.

The histogram methods make two passes over the calibration batches: extremes, then a
2048-bin histogram inside them.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..errors import ConfigError
from ..runtime import run_batch

METHODS = ("minmax", "percentile", "mse", "entropy")
BINS = 2048
LEVELS = 256  # uint8


def mse_range(hist: np.ndarray, edges: np.ndarray, num_candidates: int = 100) -> tuple[float, float]:
    """The [lo, hi] (a shrunk [edges[0], edges[-1]]) minimising expected uint8 quantization MSE."""
    lo0, hi0 = float(min(edges[0], 0.0)), float(max(edges[-1], 0.0))
    centers = (edges[:-1] + edges[1:]) / 2
    alphas = np.linspace(1.0, 0.2, num_candidates)
    los, his = lo0 * alphas, hi0 * alphas
    deltas = (his - los) / (LEVELS - 1)
    c = centers[None, :]
    clipped = np.clip(c, los[:, None], his[:, None])
    inside = (c >= los[:, None]) & (c <= his[:, None])
    err = np.where(inside, deltas[:, None] ** 2 / 12, (c - clipped) ** 2) * hist[None, :]
    best = int(np.argmin(err.sum(axis=1)))
    return float(los[best]), float(his[best])


def entropy_threshold(hist: np.ndarray, edges: np.ndarray, stride: int = 16) -> float:
    """TensorRT-style KL-minimising clip threshold for a histogram of non-negative values over [0, max]."""
    hist = hist.astype(np.float64)
    # the spike of exact zeros after a ReLU would dominate the divergence and pull the threshold
    # down (each merged chunk spreads it over more bins as the threshold grows); zero is exact
    # on the uint8 grid anyway, so leave it out
    hist[0] = 0
    n = len(hist)
    best_kl, best_i = np.inf, n
    for i in range(LEVELS, n + 1, stride):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        if p.sum() == 0:
            continue
        # q: the first i bins merged into LEVELS chunks, each chunk spread over its non-empty bins
        chunks = np.array_split(np.arange(i), LEVELS)
        q = np.zeros(i)
        for ch in chunks:
            nz = hist[ch] > 0
            if nz.any():
                q[ch[nz]] = hist[ch].sum() / nz.sum()
        p /= p.sum()
        q /= max(q.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def _lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation between order statistics, to the last bit (it switches form at 0.5)."""
    d = b - a
    return float(b - d * (1 - t)) if t >= 0.5 else float(a + d * t)


def percentile_pair(x: np.ndarray, p: float) -> tuple[float, float]:
    """``np.percentile(x, [100 - p, p])`` bit for bit, but touching only the tails (much faster for p near 100).

    A spike at an end (a ReLU's zeros, a ReLU6's sixes) that covers the wanted ranks is answered by counting;
    otherwise the tail beyond a threshold read off a subsample is partitioned, not the whole tensor."""
    flat = x.ravel()
    n = flat.size
    if n < 65536:
        lo, hi = np.percentile(flat, [100 - p, p])
        return float(lo), float(hi)
    sample = flat[:: max(1, n // 16384)]
    out = []
    for q in (100 - p, p):
        idx = q / 100 * (n - 1)
        i0 = int(np.floor(idx))
        i1 = min(i0 + 1, n - 1)
        upper = q > 50
        need = (n - i0) if upper else (i1 + 1)  # order statistics in the tail, counted from its end
        end = float(sample.max() if upper else sample.min())
        if np.count_nonzero(sample == end) * (n / sample.size) > 2 * need:  # a spike at the end, likely
            extreme = flat.max() if upper else flat.min()
            if extreme == end and np.count_nonzero(flat == extreme) >= need:
                out.append(_lerp(float(extreme), float(extreme), idx - i0))
                continue
        # a threshold from the subsample, well beyond the wanted rank, so the tail holds the order statistics
        t = np.percentile(sample, min(100.0, q + 1.0) if not upper else max(0.0, q - 1.0))
        tail = flat[flat >= t] if upper else flat[flat <= t]
        if tail.size < need:  # the subsample misjudged the tail: fall back to the full partition
            out.append(float(np.percentile(flat, q)))
            continue
        base = (n - tail.size) if upper else 0  # rank in ``flat`` of the tail's smallest element
        k0, k1 = i0 - base, i1 - base
        part = np.partition(tail, [k0, k1])
        out.append(_lerp(float(part[k0]), float(part[k1]), idx - i0))
    return out[0], out[1]


class RangeObserver:
    """Accumulates per-tensor statistics over batches, then chooses each tensor's range."""

    def __init__(self, method: str = "minmax", percentile: float = 99.99):
        if method not in METHODS:
            raise ConfigError(f"unknown calibration method {method!r}; choose from {METHODS}")
        self.method, self.percentile = method, percentile
        self.lo: dict[str, float] = {}
        self.hi: dict[str, float] = {}
        self.hist: dict[str, np.ndarray] = {}
        self._pct: dict[str, list] = {}

    @property
    def needs_histograms(self) -> bool:
        return self.method in ("mse", "entropy")

    def observe(self, name: str, x: np.ndarray) -> None:
        """First pass: extremes (and percentiles)."""
        x = x.astype(np.float32, copy=False)
        self.lo[name] = min(self.lo.get(name, np.inf), float(x.min()))
        self.hi[name] = max(self.hi.get(name, -np.inf), float(x.max()))
        if self.method == "percentile":
            lo, hi = percentile_pair(x, self.percentile)
            s = self._pct.setdefault(name, [0.0, 0.0, 0])
            s[0], s[1], s[2] = s[0] + float(lo), s[1] + float(hi), s[2] + 1

    def observe_histogram(self, name: str, x: np.ndarray) -> None:
        """Second pass: a histogram inside [min(lo, 0), max(hi, 0)]."""
        lo, hi = min(self.lo[name], 0.0), max(self.hi[name], 0.0)
        if hi <= lo:
            return
        import torch  # histc is several times faster than np.histogram on large activations

        h = torch.histc(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), bins=BINS, min=lo, max=hi)
        self.hist[name] = self.hist.get(name, 0) + h.double().numpy()

    def ranges(self) -> dict[str, tuple[float, float]]:
        out = {}
        for k in self.lo:
            lo, hi = self.lo[k], self.hi[k]
            if self.method == "percentile":
                s = self._pct[k]
                lo, hi = s[0] / s[2], s[1] / s[2]
            elif self.needs_histograms and k in self.hist:
                edges = np.linspace(min(lo, 0.0), max(hi, 0.0), BINS + 1)
                if self.method == "entropy" and lo >= 0:
                    lo, hi = 0.0, entropy_threshold(self.hist[k], edges)
                else:
                    lo, hi = mse_range(self.hist[k], edges)
            out[k] = (lo, hi)
        return out


def collect_ranges(model, tensors: list[str], batches: Iterable, *, method: str = "minmax",
                   percentile: float = 99.99, threads: int = 2) -> dict[str, tuple[float, float]]:
    """Run ``model`` (an FP32 ``onnx.ModelProto``) on ``batches`` and return each tensor's (lo, hi)."""
    obs = RangeObserver(method, percentile)
    batches = [np.asarray(b.numpy() if hasattr(b, "numpy") else b, np.float32) for b in batches]
    if not batches or sum(len(b) for b in batches) == 0:
        raise ConfigError("calibration received no images; check the calibration dataset")
    passes = [obs.observe] + ([obs.observe_histogram] if obs.needs_histograms else [])
    for fn in passes:
        for name, value in iterate_tensors(model, tensors, batches, threads):
            fn(name, value)
    return obs.ranges()


def iterate_tensors(model, tensors: list[str], batches: list[np.ndarray], threads: int = 2):
    """Yield (tensor name, value) for every batch, running the graph without rewrites."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    existing = {o.name for o in m.graph.output}
    input_name = m.graph.input[0].name
    wanted = [t for t in tensors if t != input_name]
    for t in wanted:
        if t not in existing:
            m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    # no graph rewrites, so every named intermediate tensor exists as it does in the file
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    for x in batches:
        for t, v in zip(wanted, run_batch(sess, wanted, x)):
            yield t, v
        if input_name in tensors:
            yield input_name, x


def first_images(batches: list, n: int) -> list:
    """The first ``n`` images of a list of batches, as batches (the last one cut)."""
    out, seen = [], 0
    for b in batches:
        if seen >= n:
            break
        out.append(b[: n - seen])
        seen += len(out[-1])
    return out
