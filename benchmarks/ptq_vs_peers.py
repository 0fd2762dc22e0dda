"""slimzoo PTQ against the peers a user would pick instead, on the same FP32 models and images.

For each zoo classifier (the FP32 baselines that `make zoo` trained, trained here if missing):
  (a) slimzoo PTQ with its defaults,
  (b) ONNX Runtime `quantize_static`, its defaults and with per-channel weights,
  (c) NNCF `nncf.quantize` on the ONNX model with its defaults (if nncf is installed),
all calibrated on the same training images and evaluated in ONNX Runtime on the same
validation set. Writes benchmarks/results/ptq_vs_peers.{csv,md}.

    python benchmarks/ptq_vs_peers.py --zoo runs/zoo [--models mobilenet_v1 resnet50] [--num-calibration 256]
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import torch

from slimzoo.bench import benchmark_latency, file_size_mb
from slimzoo.export import export_onnx
from slimzoo.runtime import OnnxPredictor
from slimzoo.storage import write_text
from slimzoo.zoo import Zoo, machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def slimzoo_ptq(model, task, fp32_path, out, calib):
    from slimzoo.quant import PTQConfig, quantize

    return quantize(model, task.example_inputs(), iter(calib), out, PTQConfig())


def ort_ptq(per_channel: bool):
    def run(model, task, fp32_path, out, calib):
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter(calib)

            def get_next(self):
                b = next(self.it, None)
                return None if b is None else {"input": b.numpy()}

        quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel)
        return out
    return run


def nncf_ptq(model, task, fp32_path, out, calib):
    import nncf
    import onnx

    q = nncf.quantize(onnx.load(str(fp32_path)), nncf.Dataset([{"input": b.numpy()} for b in calib]),
                      subset_size=sum(len(b) for b in calib))
    onnx.save(q, str(out))
    return out


METHODS = {"slimzoo (defaults)": slimzoo_ptq, "onnxruntime quantize_static (defaults)": ort_ptq(False),
           "onnxruntime quantize_static (per-channel)": ort_ptq(True), "nncf.quantize (defaults)": nncf_ptq}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo", help="zoo output folder holding the trained FP32 baselines")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--models", nargs="*", default=["mobilenet_v1", "mobilenet_v2", "resnet50"])
    ap.add_argument("--num-calibration", type=int, default=256)
    ap.add_argument("--bench-size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="ptq_vs_peers", help="file stem of the results")
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = Zoo(Path(args.zoo), profile_name=args.profile)
    rows = []
    for name in args.models:
        model, task = zoo.baseline(f"cls-{name}-none")
        calib = list(task.calibration_batches(args.num_calibration, 32))
        with tempfile.TemporaryDirectory() as d:
            fp32 = export_onnx(model, Path(d) / "fp32.onnx", task.example_inputs())
            base = task.evaluate(OnnxPredictor(fp32))["top1"]
            lat = benchmark_latency(fp32, (1, 3, args.bench_size, args.bench_size), threads=(1, 2), runs=args.runs)
            rows.append({"model": name, "method": "FP32", "top1": base, "drop": 0.0, "size_mb": file_size_mb(fp32),
                         "t1_ms": lat["1"]["median"], "t2_ms": lat["2"]["median"], "quant_s": 0.0})
            for method, fn in METHODS.items():
                out = Path(d) / f"{abs(hash(method))}.onnx"
                t0 = time.perf_counter()
                try:
                    fn(model, task, fp32, out, calib)
                except ImportError as e:
                    print(f"skipping {method}: {e}")
                    continue
                secs = time.perf_counter() - t0
                top1 = task.evaluate(OnnxPredictor(out))["top1"]
                lat = benchmark_latency(out, (1, 3, args.bench_size, args.bench_size), threads=(1, 2),
                                        runs=args.runs)
                rows.append({"model": name, "method": method, "top1": top1, "drop": round(base - top1, 3),
                             "size_mb": file_size_mb(out), "t1_ms": lat["1"]["median"], "t2_ms": lat["2"]["median"],
                             "quant_s": secs})
                print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{args.name}.csv.tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (out / f"{args.name}.csv.tmp").replace(out / f"{args.name}.csv")
    mi = machine_info()
    md = ["# PTQ: slimzoo vs peers", "",
          f"{mi['date']}, {mi['cpu']} ({mi['cores']} cores), ONNX Runtime {mi['onnxruntime']}; "
          f"{args.num_calibration} calibration images, whole validation set, latency at "
          f"{args.bench_size}x{args.bench_size}, batch 1, median of {args.runs}. "
          f"Command: `python benchmarks/ptq_vs_peers.py --zoo {args.zoo} --models {' '.join(args.models)} "
          f"--num-calibration {args.num_calibration} --name {args.name}`", "",
          "| Model | Method | Top-1 | Drop | Size (MB) | T1 (ms) | T2 (ms) | Quantize (s) |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['method']} | {r['top1']:.2f} | {r['drop']:.2f} | {r['size_mb']:.2f} | "
           f"{r['t1_ms']:.2f} | {r['t2_ms']:.2f} | {r['quant_s']:.1f} |" for r in rows]
    write_text(out / f"{args.name}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
