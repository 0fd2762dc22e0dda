"""Per-layer quantization analysis and accuracy-aware fallback to FP32.

For each quantized layer (Conv/Gemm/MatMul node of the BN-folded FP32 graph), the model
is quantized with *only that layer* in INT8 and run in ONNX Runtime: the SQNR of the
network output against FP32 on the calibration images, and the metric change on the
evaluation set. ``keep_fewest_fp32`` then leaves in float the fewest layers (greedy, most
harmful first) needed to stay within a metric drop. Task-agnostic: it sees an ONNX model,
image batches and an ``evaluate(path) -> metric`` callable.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .ptq import PTQConfig, prepare_ptq
from .qdq import COMPUTE, QUANT_IO, QdqPlan, plan_qdq, write_qdq
from .qparams import QuantParams


def _only_layer_plan(model, layer: str, target: str = "onnxruntime") -> QdqPlan:
    """A plan that quantizes ``layer`` (and the activation folded into it) and nothing else."""
    producer_of = {o: n for n in model.graph.node for o in n.output}
    keep = {n.name for n in model.graph.node
            if n.name != layer and (n.op_type in COMPUTE or n.op_type in QUANT_IO or n.op_type in ("Relu", "Clip"))}
    for n in model.graph.node:  # let the ReLU right after the layer fold into it
        if n.op_type in ("Relu", "Clip") and producer_of.get(n.input[0]) is not None \
                and producer_of[n.input[0]].name == layer:
            keep.discard(n.name)
    return plan_qdq(model, keep, target, output_float=False)  # alone, the layer's output feeds no integer op


def _sub_qparams(full: QuantParams, full_plan: QdqPlan, plan: QdqPlan) -> QuantParams:
    acts = {}
    for t in plan.activations:
        src = t if t in full.activations else full_plan.shared.get(t)
        if src is None or src not in full.activations:
            raise KeyError(t)
        acts[t] = full.activations[src]
    return QuantParams(activations=acts, weights={w: full.weights[w] for w in plan.weights},
                       biases={n: full.biases[n] for n in plan.biases if n in full.biases})


def _sqnr_db(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    sig = sum(float((r.astype(np.float64) ** 2).sum()) for r in ref)
    err = sum(float(((r.astype(np.float64) - o) ** 2).sum()) for r, o in zip(ref, out))
    return float("inf") if err == 0 else 10 * np.log10(sig / err)


def _outputs(path, batches) -> list[np.ndarray]:
    from ..runtime import ort_session

    from ..runtime import run_batch

    s = ort_session(path, 2)
    return [run_batch(s, None, b)[0] for b in batches]


def analyze_layers(fp32_path: str | Path, batches: Sequence, evaluate: Callable[[Path], float] | None, *,
                   cfg: PTQConfig | None = None, progress: bool = True) -> dict:
    """SQNR (dB) and metric change of quantizing each layer alone; also the all-INT8 metric.

    With ``evaluate=None`` only the SQNR is measured (a few forward passes per layer, no evaluation).
    """
    from tqdm import tqdm

    cfg = cfg or PTQConfig()
    prep = prepare_ptq(fp32_path, batches, cfg, all_images=True)  # the same pipeline as the file PTQ writes
    model, full_plan, full, batches = prep.model, prep.plan, prep.qparams, prep.batches
    ops = {n.name: n.op_type for n in model.graph.node}
    ref = _outputs(fp32_path, batches)
    fp32_metric = evaluate(Path(fp32_path)) if evaluate else None
    layers = []
    with tempfile.TemporaryDirectory() as d:
        all_path = write_qdq(model, full_plan, full, Path(d) / "all.onnx")
        int8_metric = evaluate(all_path) if evaluate else None
        for layer in tqdm(full_plan.layers, desc="per-layer analysis", disable=None if progress else True,
                          leave=False):
            plan = _only_layer_plan(model, layer, cfg.target)
            path = write_qdq(model, plan, _sub_qparams(full, full_plan, plan), Path(d) / "one.onnx")
            sqnr = round(_sqnr_db(ref, _outputs(path, batches)), 3)
            layers.append({"name": layer, "module": full_plan.modules[layer], "op": ops[layer], "sqnr_db": sqnr,
                           "metric_delta": round(evaluate(path) - fp32_metric, 4) if evaluate else None})
    return {"fp32_metric": fp32_metric, "int8_metric": int8_metric, "calibration": cfg.calibration,
            "layers": layers}


def keep_fewest_fp32(fp32_path: str | Path, batches: Sequence, evaluate: Callable[[Path], float], out_path,
                     max_drop: float, analysis: dict, *, cfg: PTQConfig | None = None) -> tuple[Path, list[str], float]:
    """Quantize, leaving in FP32 the fewest layers (most harmful first) so the drop is at most ``max_drop``.

    Returns (path, layers kept in FP32, metric of the written file).
    """
    from .ptq import quantize_onnx

    cfg = cfg or PTQConfig()
    order = sorted(analysis["layers"], key=lambda r: (r["metric_delta"], r["sqnr_db"]))
    keep: list[str] = list(cfg.keep_fp32)
    target = analysis["fp32_metric"] - max_drop
    for i in range(len(order) + 1):
        c = PTQConfig(**{**cfg.to_dict(), "keep_fp32": keep})
        path, _, _ = quantize_onnx(fp32_path, out_path, batches, c)
        metric = evaluate(Path(path))
        if metric >= target or i == len(order):
            return Path(path), keep, metric
        keep = keep + [order[i]["module"]]
    raise AssertionError("unreachable")


def quantize_within_drop(fp32_path: str | Path, batches: Sequence, evaluate: Callable[[Path], float], out_path,
                         max_drop: float, *, cfg: PTQConfig | None = None, progress: bool = True
                         ) -> tuple[Path, dict]:
    """The accuracy-aware flow: per-layer analysis, then the fewest layers in FP32 so that ``evaluate`` drops at
    most ``max_drop``. Returns (the INT8 file, the analysis with an ``accuracy_aware`` entry)."""
    analysis = analyze_layers(fp32_path, batches, evaluate, cfg=cfg, progress=progress)
    path, kept, metric = keep_fewest_fp32(fp32_path, batches, evaluate, out_path, max_drop, analysis, cfg=cfg)
    analysis["accuracy_aware"] = {"max_drop": max_drop, "kept_fp32": kept, "metric": metric}
    return path, analysis


def plot_analysis(analysis: dict, path: str | Path) -> Path:
    """A PNG bar chart: per-layer SQNR and metric change when only that layer is INT8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..storage import atomic_write

    layers = analysis["layers"]
    names = [r["module"][-28:] for r in layers]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 0.28 * len(layers)), 7), sharex=True)
    axes[0].bar(range(len(layers)), [min(r["sqnr_db"], 80) for r in layers], color="#3b75af")
    axes[0].set_ylabel("output SQNR (dB)\nonly this layer INT8")
    axes[1].bar(range(len(layers)), [r["metric_delta"] for r in layers],
                color=["#c0392b" if r["metric_delta"] < 0 else "#27ae60" for r in layers])
    axes[1].set_ylabel("metric change (points)")
    axes[1].axhline(0, color="black", lw=0.6)
    axes[1].set_xticks(range(len(layers)), names, rotation=90, fontsize=6)
    fig.suptitle(f"Per-layer INT8 analysis ({analysis['calibration']} calibration): FP32 "
                 f"{analysis['fp32_metric']:.2f}, all INT8 {analysis['int8_metric']:.2f}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)
