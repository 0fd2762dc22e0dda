"""``calibration="auto"``: percentile or MSE ranges, whichever keeps the model's output closer to FP32.

Neither range method is best on every network: on trained networks (benchmarks/results/ptq_vs_peers_torchvision.md)
percentile ranges lost 1.07 Top-1 on MobileNetV3-Small where MSE ranges lost 0.16, and MSE ranges lost 7.21 on
EfficientNet-B0 where percentile lost 0.88. Both files are written and run on the calibration images; the one whose
first output agrees more often with the FP32 model's (argmax over channels: the class of an image or of a pixel) is
kept, output SQNR (class scores centered) breaking ties. No labels are needed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

CANDIDATES = ("percentile", "mse")


def _outputs(path: Path, batches: list) -> list[np.ndarray]:
    import onnxruntime as ort

    from ..runtime import run_batch

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    outs = [run_batch(s, None, b) for b in batches]
    return [np.concatenate([o[k] for o in outs]).astype(np.float64) for k in range(len(outs[0]))]


def _centered(x: np.ndarray) -> np.ndarray:
    """``x`` less its mean over the channel axis (axis 1): a shift that softmax and argmax ignore."""
    return x - x.mean(axis=1, keepdims=True) if x.ndim >= 2 and x.shape[1] > 1 else x


def output_sqnr(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio (dB) over all outputs, each centered over its channel axis (class scores
    shifted alike for all classes are the same prediction)."""
    ref, out = [_centered(r) for r in ref], [_centered(o) for o in out]
    sig = sum(float((r ** 2).sum()) for r in ref)
    err = sum(float(((r - o) ** 2).sum()) for r, o in zip(ref, out))
    return float(10 * np.log10(max(sig, 1e-30) / max(err, 1e-30)))


def agreement(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    """Share (%) of positions where the first output's argmax over the channel axis matches FP32's."""
    r, o = ref[0], out[0]
    if r.ndim < 2 or r.shape[1] < 2:
        return 100.0
    return float(100 * np.mean(r.argmax(1) == o.argmax(1)))


def choose_ranges(model, plan, batches: list, percentile: float, to_qparams, max_images: int = 128):
    """(ranges, report): the activation ranges of the candidate method whose INT8 file's outputs are closest to
    the FP32 model's on (up to ``max_images`` of) the calibration images. ``to_qparams(ranges)`` turns ranges into
    the quantization parameters the file is written with."""
    import onnx

    from .calibrate import collect_ranges, first_images
    from .qdq import write_qdq

    images = first_images(batches, max_images)
    seen = sum(len(b) for b in images)
    report, best = {}, None
    with tempfile.TemporaryDirectory() as d:
        fp32 = Path(d) / "fp32.onnx"
        onnx.save(model, str(fp32))
        ref = _outputs(fp32, images)
        for method in CANDIDATES:
            ranges = collect_ranges(model, plan.activations, batches, method=method, percentile=percentile)
            path = write_qdq(model, plan, to_qparams(ranges), Path(d) / f"{method}.onnx")
            out = _outputs(path, images)
            report[method] = (round(agreement(ref, out), 2), round(output_sqnr(ref, out), 2))
            if best is None or report[method] > report[best[0]]:  # agreement first, then SQNR
                best = (method, ranges)
    return best[1], {"chosen": best[0], "agreement_pct": {k: v[0] for k, v in report.items()},
                     "output_sqnr_db": {k: v[1] for k, v in report.items()}, "images": seen}
