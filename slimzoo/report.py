"""``report.html``: one self-contained static page of the zoo's results (tables, plots, environment).

Plots are drawn with matplotlib and embedded as base64 PNGs; styles are inline. The page loads
nothing from the network, so it opens anywhere, offline.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from .storage import read_json, write_text
from .zoo.recipes import ROW_ID, load_reference
from .zoo.results import METRIC_LABEL, compare, fmt_controlled, fmt_metric, fmt_ref, label_of

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1560px;
color:#1d2330;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{margin-top:36px;border-bottom:2px solid #dde3ea;padding-bottom:4px}
h3{margin-top:24px}
table{border-collapse:collapse;font-size:13px;margin:12px 0;width:100%}
th,td{border:1px solid #d5dbe3;padding:4px 7px;text-align:right;white-space:nowrap}
th{background:#eef2f7;white-space:normal}.scroll{overflow-x:auto}td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}
tr.fp32 td{background:#f8fafc;font-weight:600}td.ref{color:#6b7686}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}
img.plot{max-width:100%;border:1px solid #e3e8ef}
.note{color:#556;font-size:13px;max-width:1000px}
dl.env{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:14px}dl.env dt{font-weight:600}
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(b64: str, alt: str, cls: str = "plot") -> str:
    return f'<figure><img class="{cls}" alt="{html.escape(alt)}" src="data:image/png;base64,{b64}"></figure>'


def _tradeoff_plots(rows: list[dict], by_id: dict) -> str:
    """Metric vs T1 latency and metric vs size, one pair per (task, dataset); compressed rows joined to FP32."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["dataset"], r["metric"]["name"]), []).append(r)
    for (task, dataset, metric), grp in groups.items():
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        models = list(dict.fromkeys(r["model"] for r in grp))
        colours = plt.get_cmap("tab10")
        for ax, key, xlabel in ((axes[0], "lat", "latency, 1 thread (ms)"), (axes[1], "size", "file size (MB)")):
            for mi, model in enumerate(models):
                pts = [r for r in grp if r["model"] == model]
                for r in pts:
                    root = by_id.get(r.get("base") or "", None)
                    while root is not None and root.get("base") in by_id:
                        root = by_id[root["base"]]
                    x = r["latency_ms"].get("1") if key == "lat" else r["size_mb"]
                    y = r["metric"]["value"]
                    marker = "o" if r["strategy"] == "none" else ("s" if "quant" in r["strategy"] or
                                                                   r["strategy"] == "qat" else "^")
                    ax.scatter([x], [y], color=colours(mi), marker=marker, s=46, zorder=3,
                               edgecolors="black" if r["strategy"] == "none" else "none")
                    if root is not None:
                        rx = root["latency_ms"].get("1") if key == "lat" else root["size_mb"]
                        ax.plot([rx, x], [root["metric"]["value"], y], color=colours(mi), lw=0.8, alpha=0.6)
                    ax.annotate(label_of(r), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
                ax.plot([], [], "o", color=colours(mi), label=model)
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_xlabel(xlabel)
            ax.set_ylabel(METRIC_LABEL.get(metric, metric))
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=8, loc="best")
        fig.suptitle(f"{task}, {dataset}: accuracy against latency and size "
                     "(circle FP32, square INT8, triangle pruned; lines join each row to its FP32 model)", fontsize=10)
        fig.tight_layout()
        out.append(_img(_png(fig), f"{task} {dataset} trade-off plot"))
    return '<div class="plots">' + "".join(out) + "</div>"


def _sensitivity_plots(zoo_dir: Path | None, rows: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .prune.sensitivity import draw_sensitivity

    if zoo_dir is None:
        return ""
    out, seen = [], set()
    for r in rows:
        if r["strategy"] != "prune" or not r.get("base"):
            continue
        for f in sorted((zoo_dir / "models" / r["base"]).glob("sensitivity-*.json")):
            if f in seen:
                continue
            seen.add(f)
            sens = read_json(f)
            fig, ax = plt.subplots(figsize=(10, 4.5))
            draw_sensitivity(sens, ax, legend=len(sens["layers"]) <= 30)
            fig.tight_layout()
            out.append(f"<h3>{html.escape(r['base'])}</h3>" + _img(_png(fig), f"pruning sensitivity of {r['base']}"))
    return "".join(out)


def _curve_plots(rows: list[dict]) -> str:
    """One small plot per FP32 baseline: the validation metric after each training epoch (and, for detectors, AP50
    and AP by object size), so a reader sees whether the baseline has flattened."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for r in rows:
        curve = r.get("curve")
        if not curve:
            continue
        fig, ax = plt.subplots(figsize=(3.6, 2.6))
        epochs = [c["epoch"] for c in curve]
        ax.plot(epochs, [c["value"] for c in curve], "o-", label=METRIC_LABEL.get(r["metric"]["name"], "metric"))
        for k in ("ap50", "ap_small", "ap_medium", "ap_large"):
            if k != r["metric"]["name"] and all(k in c.get("metrics", {}) for c in curve):
                ax.plot(epochs, [c["metrics"][k] for c in curve], ".--", lw=1, label=k)
        ax.set_xlabel("epoch")
        ax.set_title(f"{r['model']} / {r['dataset']}", fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        out.append(_img(_png(fig), f"validation curve of {r['id']}"))
    return f'<div class="plots">{"".join(out)}</div>' if out else ""


def _quant_plots(zoo_dir: Path | None, rows: list[dict]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if zoo_dir is None:
        return ""
    out = []
    for r in rows:
        f = zoo_dir / "rows" / r["id"] / "quant_layers.json"
        if not f.is_file():
            continue
        a = read_json(f)
        layers = a["layers"]
        fig, ax = plt.subplots(figsize=(max(8, 0.2 * len(layers)), 3.6))
        vals = [min(x["sqnr_db"], 80) for x in layers]
        ax.bar(range(len(layers)), vals, color=["#c0392b" if v < 25 else "#3b75af" for v in vals])
        ax.set_xticks(range(len(layers)), [x["module"][-24:] for x in layers], rotation=90, fontsize=6)
        ax.set_ylabel("output SQNR (dB)")
        ax.set_title(f"{r['id']}: output SQNR with only that layer INT8 ({a['images']} images; "
                     "higher is better, red < 25 dB)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        out.append(f"<h3>{html.escape(r['id'])}</h3>" + _img(_png(fig), f"per-layer INT8 error of {r['id']}"))
    return "".join(out)


def _tables(rows: list[dict], by_id: dict, reference: dict) -> str:
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        trs = []
        for r in (r for r in rows if r["task"] == task):
            m = r["metric"]
            c = compare(r, by_id)
            lat = " / ".join(f"{r['latency_ms'][k]:.2f}" for k in sorted(r["latency_ms"], key=int))
            ref = fmt_ref(reference.get(r["id"]))
            cells = [r["model"], label_of(r), r["dataset"], f"{METRIC_LABEL.get(m['name'], m['name'])[:-4]} {fmt_metric(r)}",
                     fmt_controlled(r), f"{r['size_mb']:.2f}", f"{c['size_ratio']:.2f}x", lat,
                     f"{c['speedup']:.2f}x" if c["speedup"] else "-", f"{r['flops'] / 1e9:.3f}",
                     f"{r['input_size'][0]}x{r['input_size'][1]}",
                     f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") else "-"]
            tds = "".join(f"<td>{html.escape(str(x))}</td>" for x in cells)
            tds += "".join(f'<td class="ref">{html.escape(x)}</td>' for x in ref)
            trs.append(f'<tr class="{"fp32" if r["strategy"] == "none" else ""}">{tds}</tr>')
        head = "".join(f"<th>{h}</th>" for h in (
            "Model", "Strategy", "Dataset", "Metric (%)", "vs FP32 control", "Size (MB)", "Size ratio", "Latency T1 / T2 / T4 (ms)",
            "T1 speed-up", "GFLOPs", "Bench res", "Peak RAM of the row (MB)", "Ref. metric", "Ref. size",
            "Ref. T1 speed-up"))
        out.append(f'<h3>{html.escape(task.capitalize())}</h3><div class="scroll"><table class="zoo"><thead><tr>'
                   f"{head}</tr></thead><tbody>{''.join(trs)}</tbody></table></div>")
    return "".join(out)


def render_report(results: dict, out: str | Path, zoo_dir: str | Path | None = None,
                  reference: dict | None = None) -> Path:
    """Write the report for ``results`` (the content of ``results.json``) to ``out``, atomically."""
    rows, meta = results["rows"], results.get("meta", {})
    reference = load_reference() if reference is None else reference
    zoo_dir = Path(zoo_dir) if zoo_dir is not None else None
    by_id = {r["id"]: r for r in rows}
    mi = meta.get("machine", {})
    env = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in (
        ("CPU", mi.get("cpu", "?")), ("cores", mi.get("cores", "?")), ("date", mi.get("date", "?")),
        ("profile", meta.get("profile", "?")), ("threads timed", "1 / 2 / 4 (ONNX Runtime intra-op)"),
        ("python", mi.get("python", "?")), ("torch", mi.get("torch", "?")),
        ("torchvision", mi.get("torchvision", "?")), ("onnxruntime", mi.get("onnxruntime", "?")),
        ("wall time of the run", f"{meta.get('wall_seconds', 0):.0f} s")))
    sens, quant, curves = _sensitivity_plots(zoo_dir, rows), _quant_plots(zoo_dir, rows), _curve_plots(rows)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>slimzoo report</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body>
<h1>slimzoo model zoo report</h1>
<p class="note">Every metric comes from running the deployable file (FP32 or INT8 ONNX) in ONNX Runtime over the
whole validation set; latency is the median of timed runs at batch 1. Size ratio and speed-up are against each
row's FP32 model; <em>vs FP32 control</em> compares rows that train after their base (pruning's fine-tuning, QAT) with
the FP32 model fine-tuned for the same extra epochs, which separates compression from extra training. The grey <em>Ref.</em> columns are the reference's own figures (PaddleX compressed model zoo,
real datasets, Paddle Lite on ARM phones), copied for comparison of shape, not measured here.</p>
<h2 id="tables">Results</h2>
{_tables(rows, by_id, reference)}
<h2 id="tradeoffs">Accuracy against latency and size</h2>
{_tradeoff_plots(rows, by_id)}
{'<h2 id="curves">Baseline training curves</h2>' + curves if curves else ''}
{'<h2 id="sensitivity">Pruning sensitivity</h2>' + sens if sens else ''}
{'<h2 id="quant-layers">Per-layer quantization error</h2>' + quant if quant else ''}
<h2 id="environment">Environment</h2>
<dl class="env">{env}</dl>
</body></html>
"""
    return write_text(out, page)


def write_report(zoo_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render ``zoo_dir/results.json`` into ``report.html`` (or ``out``)."""
    zoo_dir = Path(zoo_dir)
    res_file = zoo_dir / "results.json"
    if not res_file.is_file():
        from .errors import ConfigError

        raise ConfigError(f"{res_file}: no results yet; run `slimzoo zoo --out {zoo_dir}` first")
    results = read_json(res_file)
    check_results(results, res_file)
    return render_report(results, out or zoo_dir / "report.html", zoo_dir)


def check_results(results, where) -> None:
    """The fields the report reads, with their types, so a hand-edited or foreign results.json is refused with
    the row and field at fault instead of a traceback."""
    from .errors import ConfigError

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ConfigError(f"{where}: {what}; not a results.json written by `slimzoo zoo`?")

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    need(isinstance(results, dict) and isinstance(results.get("rows"), list), "expected an object with a 'rows' list")
    need(isinstance(results.get("meta", {}), dict), "'meta' must be an object")
    for i, r in enumerate(results["rows"]):
        at = f"rows[{i}]"
        need(isinstance(r, dict), f"{at} must be an object")
        for key in ("id", "task", "model", "dataset", "strategy"):
            need(isinstance(r.get(key), str), f"{at}: '{key}' must be a string")
        need(bool(ROW_ID.fullmatch(r["id"])) and ".." not in r["id"],
             f"{at}: id {r['id']!r} is not a row id (letters, digits, '.', '_', '-')")
        m = r.get("metric")
        need(isinstance(m, dict) and isinstance(m.get("name"), str) and number(m.get("value")),
             f"{at}: 'metric' must be an object with a 'name' and a numeric 'value'")
        need(r["strategy"] == "none" or number(m.get("delta")), f"{at}: 'metric.delta' must be a number")
        lat = r.get("latency_ms")
        need(isinstance(lat, dict) and all(str(k).isdigit() and number(v) for k, v in lat.items()),
             f"{at}: 'latency_ms' must map thread counts to milliseconds")
        need(number(r.get("size_mb")), f"{at}: 'size_mb' must be a number")
        curve = r.get("curve", [])
        need(isinstance(curve, list) and all(isinstance(c, dict) and number(c.get("epoch")) and number(c.get("value"))
                                             for c in curve), f"{at}: 'curve' must be a list of {{epoch, value}}")
