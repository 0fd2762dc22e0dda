"""Which PTQ defaults? Top-1 drop of every calibration method, with and without bias correction.

Runs on the FP32 baselines of the zoo (trained here if missing), 256 calibration images,
the whole validation set, each INT8 file evaluated in ONNX Runtime. Writes
benchmarks/results/ptq_calibration_sweep.md.

    python benchmarks/ptq_calibration_sweep.py --zoo runs/zoo
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from slimzoo.export import export_onnx
from slimzoo.quant import PTQConfig, quantize
from slimzoo.quant.calibrate import METHODS
from slimzoo.runtime import OnnxPredictor
from slimzoo.storage import write_text
from slimzoo.zoo import Zoo, machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--models", nargs="*", default=["mobilenet_v1", "mobilenet_v2", "resnet50"])
    ap.add_argument("--num-calibration", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = Zoo(Path(args.zoo), profile_name=args.profile)
    tmp = Path(args.zoo) / "sweep"
    drops: dict[tuple[str, bool], list[float]] = {}
    lines = []
    for name in args.models:
        model, task = zoo.baseline(f"cls-{name}-none")
        fp32 = task.evaluate(OnnxPredictor(export_onnx(model, tmp / f"{name}.onnx", task.example_inputs())))["top1"]
        for n_cal in args.num_calibration:
            calib = list(task.calibration_batches(n_cal))
            for method in METHODS:
                for bc in (False, True):
                    t0 = time.perf_counter()
                    p = quantize(model, task.example_inputs(), calib, tmp / f"{name}_int8.onnx",
                                 PTQConfig(calibration=method, bias_correction=bc))
                    secs = time.perf_counter() - t0
                    drop = round(fp32 - task.evaluate(OnnxPredictor(p))["top1"], 3)
                    drops.setdefault((method, bc), []).append(drop)
                    lines.append(f"| {name} | {n_cal} | {method} | {'yes' if bc else 'no'} | {fp32:.2f} | "
                                 f"{drop:.2f} | {secs:.1f} |")
                    print(lines[-1], flush=True)
    mi = machine_info()
    md = ["# PTQ calibration sweep", "",
          f"{mi['date']}, {mi['cpu']} ({mi['cores']} cores). Calibration on {args.num_calibration} images; Top-1 "
          "of each INT8 file in ONNX Runtime over the whole validation set (1,000 images: one image is 0.1 "
          "points). Command: `python benchmarks/ptq_calibration_sweep.py --zoo " + args.zoo + "`", "",
          "| Model | Calib images | Calibration | Bias correction | FP32 Top-1 | Drop | Quantize (s) |",
          "|---|---|---|---|---|---|---|",
          *lines, "", "Mean / worst drop over the models and calibration sizes:", "", "| Calibration | Bias correction | Mean drop | Worst drop |",
          "|---|---|---|---|"]
    md += [f"| {m} | {'yes' if bc else 'no'} | {sum(d) / len(d):.2f} | {max(d):.2f} |" for (m, bc), d in drops.items()]
    write_text(Path(args.out) / "ptq_calibration_sweep.md", "\n".join(md) + "\n")
    print("\n".join(md[-len(drops) - 2:]))


if __name__ == "__main__":
    main()
