"""The summary tables under the zoo table in ``ZOO.md``: where the time went, and the FP32 baselines' validation
curves. Plain functions of the result rows."""
from __future__ import annotations

STAGES = ("data", "train", "curve", "prune", "qat", "control", "quantize", "layer_analysis", "export", "evaluate",
          "benchmark")
FLAT = 0.5  # a baseline whose last epoch gains less than this (metric points) counts as near its plateau


def time_table(rows: list[dict]) -> list[str]:
    """Seconds per task and stage, summed over the rows' own computation (``stage_seconds``)."""
    timed = [r for r in rows if r.get("stage_seconds")]
    if not timed:
        return []
    stages = [s for s in STAGES if any(s in r["stage_seconds"] for r in timed)]
    lines = ["", "### Where the time went (seconds, as each row was computed)", "",
             "| Task | Rows | " + " | ".join(s.replace("_", " ") for s in stages) + " | Row total |",
             "|---|---|" + "---|" * len(stages) + "---|"]
    total = {s: 0.0 for s in stages}
    for task in dict.fromkeys(r["task"] for r in timed):
        mine = [r for r in timed if r["task"] == task]
        per = {s: sum(r["stage_seconds"].get(s, 0.0) for r in mine) for s in stages}
        for s in stages:
            total[s] += per[s]
        lines.append(f"| {task} | {len(mine)} | " + " | ".join(f"{per[s]:.0f}" for s in stages)
                     + f" | {sum(r['seconds'] for r in mine):.0f} |")
    lines.append(f"| all | {len(timed)} | " + " | ".join(f"{total[s]:.0f}" for s in stages)
                 + f" | {sum(r['seconds'] for r in timed):.0f} |")
    return lines


def last_gain(curve: list[dict]) -> float | None:
    """What the last training epoch added to the validation metric (None for a one-point curve)."""
    return round(curve[-1]["value"] - curve[-2]["value"], 3) if len(curve) >= 2 else None


def curve_table(rows: list[dict]) -> list[str]:
    """The FP32 baselines' validation curves: the metric after each epoch and the last epoch's gain."""
    mine = [r for r in rows if r.get("curve")]
    if not mine:
        return []
    lines = ["## Baseline training curves", "",
             f"The PyTorch FP32 model on the validation set after each epoch; a baseline whose last epoch gains "
             f"{FLAT} points or more is still learning (marked *not flat*).", "",
             "| Model | Dataset | Metric | By epoch | Last epoch gain |", "|---|---|---|---|---|"]
    for r in mine:
        gain = last_gain(r["curve"])
        shown = "-" if gain is None else f"{gain + 0.0:+.2f}" + ("" if gain < FLAT else " (*not flat*)")
        lines.append(f"| {r['model']} | {r['dataset']} | {r['metric']['name']} | "
                     + " / ".join(f"{c['value']:.1f}" for c in r["curve"]) + f" | {shown} |")
    return lines + [""]