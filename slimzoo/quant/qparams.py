"""Quantization parameters: one representation, written to ONNX by one exporter (``qdq.write_qdq``).

Pure functions here compute scales and zero points; nothing imports ONNX or a runtime.
Activations are asymmetric uint8 per tensor (symmetric, zero point 0, for OpenVINO); weights are symmetric int8
per output channel.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UINT8 = (0, 255)
INT32_MAX = 2**31 - 1
INT8_SYM = (-127, 127)  # symmetric weights: -128 unused, so the grid is symmetric around zero


@dataclass
class TensorQParams:
    """Per-tensor activation quantization: ``x ~ scale * (q - zero_point)``, q in uint8 (or int8 when
    ``signed``: symmetric quantization of a tensor with negative values, zero point 0)."""

    scale: float
    zero_point: int
    signed: bool = False

    @property
    def qrange(self) -> tuple[int, int]:
        return (-128, 127) if self.signed else UINT8

    @property
    def dtype(self):
        return np.int8 if self.signed else np.uint8

    def to_dict(self) -> dict:
        return {"scale": self.scale, "zero_point": self.zero_point, "signed": self.signed}


@dataclass
class WeightQParams:
    """Per-channel symmetric int8 weight quantization along ``axis``; ``qweight`` holds the rounded values."""

    scale: np.ndarray  # float32, one per channel
    qweight: np.ndarray  # int8, the weight's shape
    axis: int = 0

    def dequantize(self) -> np.ndarray:
        shape = [1] * self.qweight.ndim
        shape[self.axis] = -1
        return self.qweight.astype(np.float32) * self.scale.reshape(shape)


@dataclass
class QuantParams:
    """Everything the QDQ writer needs: activation qparams by tensor name, weight qparams by initializer name,
    and (after bias correction) float biases by node name, quantized to int32 by the writer."""

    activations: dict[str, TensorQParams] = field(default_factory=dict)
    weights: dict[str, WeightQParams] = field(default_factory=dict)
    biases: dict[str, np.ndarray] = field(default_factory=dict)  # node name -> corrected float bias

    def summary(self) -> dict:
        return {"activations": {k: v.to_dict() for k, v in self.activations.items()},
                "weights": {k: {"channels": int(v.scale.size), "axis": v.axis} for k, v in self.weights.items()}}


def activation_qparams(lo: float, hi: float, symmetric: bool = False) -> TensorQParams:
    """Asymmetric uint8 qparams covering [lo, hi] (widened to include 0, so zero is exact). With ``symmetric``
    the zero point is 0: uint8 for a tensor with no negative values, int8 with scale ``max|x| / 127`` otherwise
    (what NNCF writes for OpenVINO, whose int8 kernels then need no zero-point compensation)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        signed = lo < 0
        scale = max(-lo, hi) / 127 if signed else hi / 255
        if scale <= 0 or not np.isfinite(scale):
            return TensorQParams(1.0, 0, signed)
        return TensorQParams(float(np.float32(scale)), 0, signed)
    qmin, qmax = UINT8
    scale = (hi - lo) / (qmax - qmin)
    if scale <= 0 or not np.isfinite(scale):
        return TensorQParams(1.0, 0)
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmax))
    return TensorQParams(float(np.float32(scale)), zp)


def weight_scales(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """Symmetric per-channel scales ``max|w| / 127`` along ``axis``."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red) if red else np.abs(w)
    return np.maximum(amax / INT8_SYM[1], 1e-12).astype(np.float32)


def quantize_weight(w: np.ndarray, scale: np.ndarray, axis: int = 0) -> np.ndarray:
    """Round-to-nearest int8 values of ``w`` for per-channel ``scale``."""
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.round(w / scale.reshape(shape)), *INT8_SYM).astype(np.int8)


def weight_qparams(w: np.ndarray, axis: int = 0) -> WeightQParams:
    """Per-channel symmetric int8 qparams with round-to-nearest weights."""
    s = weight_scales(w, axis)
    return WeightQParams(scale=s, qweight=quantize_weight(w, s, axis), axis=axis)


def quantize_bias(b: np.ndarray, input_scale: float, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias with scale ``input_scale * w_scale`` (what integer conv kernels accumulate in)."""
    # integer kernels assume exactly this scale, so out-of-range values are clipped, not rescaled
    # in float64: float32 cannot hold 2**31 - 1 (it rounds to 2**31, which wraps to INT32_MIN in the cast)
    s = (np.float32(input_scale) * w_scale).astype(np.float32)
    q = np.clip(np.round(np.asarray(b, np.float64) / s.astype(np.float64)), -INT32_MAX, INT32_MAX).astype(np.int32)
    return q, s


def bias_safe_weight_scale(b: np.ndarray, input_scale: float, w_scale: np.ndarray) -> np.ndarray:
    """Per-channel weight scales, raised where needed so that ``b / (input_scale * w_scale)`` fits int32.

    A channel whose weights are all (near) zero gets the floor scale; its bias then needs more than
    2**31 accumulator steps. Raising that channel's weight scale loses nothing (its weights round to the
    same few values) and keeps the bias exact instead of saturating it.
    """
    need = np.abs(np.asarray(b, np.float64)) / (float(np.float32(input_scale)) * (INT32_MAX - 1024))
    return np.maximum(w_scale.astype(np.float64), need).astype(np.float32)
