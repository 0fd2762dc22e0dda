"""Zoo results as data, and their rendering to ``ZOO.md``: reads the result rows (``results.json``), imports
nothing from the runner. ``report.html`` (slimzoo.report) renders the same rows."""
from __future__ import annotations

from typing import TypedDict

from .tables import curve_table, time_table

RESULTS_VERSION = 3  # 2: rows gain "control" (the equally trained FP32 control) and results.json a version;
# 3: FP32 rows gain "curve" (validation after every training epoch)
STRATEGY_ORDER = ("none", "quant", "qat", "prune")
METRIC_LABEL = {"top1": "Top-1 (%)", "bbox_map": "Box mAP (%)", "voc_map": "VOC mAP@0.5 (%)", "miou": "mIoU (%)"}
STRATEGY_LABEL = {"none": "none", "quant": "quant (PTQ)", "qat": "quant (QAT)"}


class Metric(TypedDict):
    name: str  # top1 | bbox_map | voc_map | miou
    value: float
    delta: float  # against the FP32 root row (0.0 for it)


class Control(TypedDict):
    value: float  # the FP32 root fine-tuned with the row's extra training schedule, scored like the root
    delta: float  # the row's metric minus the control's
    epochs: int
    lr: float
    max_steps: int | None
    key: str


class CurvePoint(TypedDict, total=False):
    epoch: int  # 1-based
    value: float  # the row's metric (PyTorch model, whole validation set)
    metrics: dict[str, float]  # everything else evaluate() returned (detectors: AP50, AP by object size, VOC mAP)
    loss_terms: dict[str, float]  # detectors: mean per-image loss terms of the epoch (obj, noobj, xy, wh, cls)


class ResultRow(TypedDict, total=False):
    """One row of ``results.json`` (``rows``), as the runner writes it and the renderers read it."""

    id: str
    task: str
    model: str
    dataset: str
    strategy: str  # none | quant | qat | prune
    base: str | None
    metric: Metric
    metrics: dict  # everything the task's evaluate() returned
    control: Control  # rows that train after their FP32 root (pruning's fine-tuning, QAT)
    curve: list[CurvePoint]  # FP32 rows trained by the zoo: the PyTorch model on the validation set after each epoch
    size_mb: float
    latency_ms: dict[str, float]  # thread count -> median ms (ONNX Runtime)
    latency_p90_ms: dict[str, float]
    latency_runs: dict[str, int]
    latency_ms_openvino: dict[str, float]
    latency_ms_gpu: dict[str, float]
    int8_ops: dict  # {"integer", "total", "float_layers"} for INT8 rows
    flops: int
    params: int
    input_size: list[int]  # bench resolution
    eval_size: list[int]
    width_mult: float
    file: str
    profile: str
    label: str
    pruning: dict | None
    recipe_hash: str
    seconds: float
    stage_seconds: dict[str, float]
    peak_rss_mb: float | None


def row_label(strategy: str, pruning: dict | None) -> str:
    """``none``, ``quant (PTQ)``, ``prune -30%``, ``prune -50% (uniform) + quant`` ..."""
    if not pruning:
        return STRATEGY_LABEL.get(strategy, strategy)
    pct = f"{100 * pruning['target_flops_reduction']:.2f}".rstrip("0").rstrip(".")
    label = f"prune -{pct}%"
    if pruning.get("method") == "uniform":
        label += " (uniform)"
    return label + {"quant": " + quant", "qat": " + QAT"}.get(strategy, "")


def label_of(row: dict) -> str:
    return row.get("label") or STRATEGY_LABEL.get(row["strategy"], row["strategy"])


def table_order(row: dict) -> tuple:
    """Table order within a model: FP32, PTQ, QAT, then pruned rows by FLOPs target, each before its INT8 row."""
    p = row.get("pruning")
    rank = STRATEGY_ORDER.index(row["strategy"]) if row["strategy"] in STRATEGY_ORDER else 9
    if p:  # the pruned FP32 row, then its INT8 rows
        return (1, p["target_flops_reduction"], -1 if row["strategy"] == "prune" else rank)
    return (0, 0.0, rank)


def signed(x: float) -> str:
    return f"{x + 0.0:+.2f}"  # + 0.0: no "-0.00"


def fmt_metric(row: dict, named: bool = False) -> str:
    """``74.90`` for an FP32 row, ``73.80 (-1.10)`` for a compressed one (change against its FP32 root row)."""
    m = row["metric"]
    name = f"{METRIC_LABEL.get(m['name'], m['name']).removesuffix(' (%)')} " if named else ""
    if row["strategy"] == "none":
        return f"{name}{m['value']:.2f}"
    return f"{name}{m['value']:.2f} ({signed(m['delta'])})"


def fmt_controlled(row: dict) -> str:
    """The change against the equally trained FP32 control, for rows that train after their base; '-' otherwise."""
    c = row.get("control")
    if not c:
        return "-"
    extra = f"{c['epochs'] * c['max_steps']} steps" if c.get("max_steps") else f"{c['epochs']} ep"
    return f"{signed(c['delta'])} (control {c['value']:.2f}, +{extra})"


def root_of(row: dict, by_id: dict[str, dict]) -> dict:
    """The FP32 row at the start of ``row``'s chain of bases."""
    while row.get("base") and row["base"] in by_id:
        row = by_id[row["base"]]
    return row


def compare(row: dict, by_id: dict[str, dict]) -> dict:
    """Our size ratio and one-thread speed-up against the row's FP32 root row (1.0 for the root itself)."""
    root = root_of(row, by_id)
    t1, root_t1 = row["latency_ms"].get("1"), root["latency_ms"].get("1")
    return {"size_ratio": row["size_mb"] / root["size_mb"],
            "speedup": root_t1 / t1 if t1 and root_t1 else None}


def fmt_ref(ref: dict | None) -> tuple[str, str, str]:
    """(metric (delta), size (ratio), T1 speed-up) of a reference row, '-' where it reports nothing."""
    if not ref:
        return "-", "-", "-"
    metric = f"{ref['metric']:.2f}" + (f" ({ref['delta']:+.2f})" if "delta" in ref else "")
    size = f"{ref['size_mb']:g} MB"
    if "base_size_mb" in ref:
        size += f" ({ref['size_mb'] / ref['base_size_mb']:.2f}x)"
    speed = "-"
    if ref.get("latency_ms") and ref.get("base_latency_ms"):
        speed = f"{ref['base_latency_ms'] / ref['latency_ms']:.2f}x"
    elif ref.get("latency_ms"):
        speed = "1.00x"
    return metric, size, speed


_INTRO = ("Metrics come from running each deployable file (FP32 or INT8 ONNX) in ONNX Runtime over the whole "
          "validation set. Latency: median of timed `session.run` calls after warm-up, at 1/2/4 intra-op threads, at "
          "the bench resolution (OpenVINO, where installed: the same file, float layers kept in float32). FLOPs count "
          "multiply-accumulates. Size ratio and T1 speed-up are against the row's FP32 model. `vs control`: rows that "
          "train after their FP32 base (pruning's fine-tuning, QAT) against the FP32 model fine-tuned for the same "
          "extra epochs with the same schedule, which separates the compression's effect from the extra training's.")
_REF = ("The `Ref.` columns are the reference's own figures (PaddleX compressed model zoo: ImageNet, COCO, Pascal VOC, "
        "Cityscapes; Paddle Lite on ARM phones, one thread, device per row in `recipes/reference.yaml`), copied, not "
        "measured: our data are synthetic, so compare the shape of the results (the change, the size ratio, the "
        "speed-up), not the absolute metric.")


def _header(metric: str, has_ov: bool, has_gpu: bool) -> list[str]:
    return [f"| Model | Strategy | Dataset | {metric} | vs control | Size (MB) | Size ratio | Latency T1 / T2 / T4 (ms) "
            "| T1 speed-up | " + ("OpenVINO T1 / T2 (ms) | " if has_ov else "")
            + ("GPU CUDA / TensorRT (ms) | " if has_gpu else "") + "GFLOPs | Params (M) | "
            "Eval res | Bench res | Ref. metric | Ref. size | Ref. T1 speed-up |",
            "|---|---|---|---|---|---|---|---|---|" + ("---|" if has_ov else "") + ("---|" if has_gpu else "")
            + "---|---|---|---|---|---|---|"]


def _line(r: dict, by_id: dict, reference: dict, named: bool, has_ov: bool, has_gpu: bool) -> str:
    lat = " / ".join(f"{r['latency_ms'][k]:.2f}" for k in sorted(r["latency_ms"], key=int))
    c = compare(r, by_id)
    speed = f"{c['speedup']:.2f}x" if c["speedup"] else "-"
    ref_metric, ref_size, ref_speed = fmt_ref(reference.get(r["id"]))
    extra = ""
    if has_ov:
        o = r.get("latency_ms_openvino")
        extra = (" / ".join(f"{o[k]:.2f}" for k in sorted(o, key=int)) if o else "-") + " | "
    if has_gpu:
        g = r.get("latency_ms_gpu", {})
        extra += " / ".join(f"{g[k]:.2f}" if k in g else "-" for k in ("onnxruntime-cuda", "onnxruntime-tensorrt"))
        extra += " | "
    return (f"| {r['model']} | {label_of(r)} | {r['dataset']} | {fmt_metric(r, named)} | {fmt_controlled(r)} | "
            f"{r['size_mb']:.2f} | {c['size_ratio']:.2f}x | {lat} | {speed} | {extra}{r['flops'] / 1e9:.3f} | "
            f"{r['params'] / 1e6:.2f} | {r['eval_size'][0]}x{r['eval_size'][1]} | "
            f"{r['input_size'][0]}x{r['input_size'][1]} | {ref_metric} | {ref_size} | {ref_speed} |")


def render_zoo_md(rows: list[dict], meta: dict, reference: dict[str, dict] | None = None) -> str:
    """The zoo table in the reference's shape, one section per task, with the reference's figures beside ours."""
    reference = reference or {}
    by_id = {r["id"]: r for r in rows}
    mi = meta.get("machine", {})
    lines = ["# slimzoo model zoo", "",
             f"Profile `{meta.get('profile')}`, measured {mi.get('date', '')} on {mi.get('cpu', '?')} "
             f"({mi.get('cores', '?')} cores); ONNX Runtime {mi.get('onnxruntime', '?')} CPU, batch 1. " + _INTRO,
             "", _REF, ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        names = list(dict.fromkeys(r["metric"]["name"] for r in mine))
        metric = METRIC_LABEL.get(names[0], names[0]) if len(names) == 1 else "Metric (%)"
        has_ov = any("latency_ms_openvino" in r for r in mine)
        has_gpu = any("latency_ms_gpu" in r for r in mine)
        lines += [f"## {task.capitalize()}", "", *_header(metric, has_ov, has_gpu)]
        lines += [_line(r, by_id, reference, len(names) > 1, has_ov, has_gpu) for r in mine]
        lines.append("")
    lines += curve_table(rows)
    lines.append(f"Wall time of this run: {meta.get('wall_seconds', 0):.0f} s (rows reused from earlier runs "
                 "count their own time in results.json).")
    lines += time_table(rows)
    return "\n".join(lines) + "\n"
