"""Which PTQ defaults? Top-1 drop and agreement with FP32 of every calibration method, with and without
bias correction, and of the percentile at three levels.

Runs on the FP32 baselines of the zoo (trained here if missing). Each setting quantizes once per
calibration draw (--draws disjoint spread-out subsets of --num-calibration training images, the same for
every setting); each INT8 file is evaluated in ONNX Runtime on the validation split widened to --num-val
images (benchmarks/_heldout.py). Writes benchmarks/results/ptq_calibration_sweep.{md,csv}.

    python benchmarks/ptq_calibration_sweep.py --zoo runs/zoo [--num-val 10000] [--draws 3]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _heldout import compare, heldout_task, machine_line, predictions, write_csv

from slimzoo.export import export_onnx
from slimzoo.quant import PTQConfig, quantize
from slimzoo.quant.calibrate import METHODS
from slimzoo.runtime import OnnxPredictor
from slimzoo.storage import write_text
from slimzoo.zoo import Zoo

RESULTS = Path(__file__).resolve().parent / "results"


def settings() -> list[tuple[str, dict]]:
    out = [(f"{m}{' + bias correction' if bc else ''}", {"calibration": m, "bias_correction": bc})
           for m in METHODS for bc in (False, True)]
    out += [(f"percentile {p}", {"calibration": "percentile", "percentile": p}) for p in (99.9, 99.999)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--models", nargs="*", default=["mobilenet_v1", "mobilenet_v2", "resnet50"])
    ap.add_argument("--num-calibration", type=int, default=256)
    ap.add_argument("--num-val", type=int, default=10000)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = Zoo(Path(args.zoo), profile_name=args.profile)
    tmp = Path(args.zoo) / "sweep"
    rows = []
    for name in args.models:
        row_id = f"cls-{name}-none"
        model, task = zoo.baseline(row_id)
        val = heldout_task(zoo, row_id, args.num_val)
        ref, true = predictions(val, OnnxPredictor(export_onnx(model, tmp / f"{name}.onnx", task.example_inputs())))
        calibs = [list(task.calibration_batches(args.num_calibration, 32, offset=k)) for k in range(args.draws)]
        for label, kw in settings():
            preds, secs = [], []
            for calib in calibs:
                t0 = time.perf_counter()
                p = quantize(model, task.example_inputs(), calib, tmp / f"{name}_int8.onnx", PTQConfig(**kw))
                secs.append(time.perf_counter() - t0)
                preds.append(predictions(val, OnnxPredictor(p))[0])
            c = compare(np.stack(preds), ref, true)
            rows.append({"model": name, "setting": label, "fp32_top1": 100 * float((ref == true).mean()),
                         **c, "quant_s": float(np.mean(secs))})
            print(rows[-1], flush=True)
    out = Path(args.out)
    write_csv(out / "ptq_calibration_sweep.csv", rows)
    n = rows[0]["num_images"]
    md = ["# PTQ calibration sweep", "",
          f"{machine_line()}. "
          f"{args.num_calibration} calibration images, mean over {args.draws} draw(s); each INT8 file scored "
          f"on {n:,} validation images. Drop: FP32 Top-1 minus INT8 Top-1 with its 95% interval (paired over "
          "images); agree: images on which the INT8 file predicts the FP32 model's class. Command: "
          f"`python benchmarks/ptq_calibration_sweep.py --zoo {args.zoo} --num-calibration "
          f"{args.num_calibration} --num-val {args.num_val} --draws {args.draws}`", "",
          "| Model | Setting | FP32 Top-1 | Drop | Agree (%) | Quantize (s) |", "|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['setting']} | {r['fp32_top1']:.2f} | {r['drop']:.2f} ± {r['drop_ci95']:.2f} | "
           f"{r['agree']:.2f} | {r['quant_s']:.1f} |" for r in rows]
    md += ["", "Over the models:", "", "| Setting | Mean drop | Worst drop | Mean agree (%) | Worst agree (%) |",
           "|---|---|---|---|---|"]
    for label, _ in settings():
        rs = [r for r in rows if r["setting"] == label]
        md.append(f"| {label} | {np.mean([r['drop'] for r in rs]):.2f} | {max(r['drop'] for r in rs):.2f} | "
                  f"{np.mean([r['agree'] for r in rs]):.2f} | {min(r['agree'] for r in rs):.2f} |")
    write_text(out / "ptq_calibration_sweep.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
