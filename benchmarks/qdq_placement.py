"""Which ops to run as integer kernels: the placement rule of slimzoo.quant.qdq, op class by op class, measured.

For each model, the FP32 ONNX file is quantized with slimzoo's default placement and with one op class taken
out of it (left in float, between DequantizeLinear and QuantizeLinear or with no quantizer at all), or, for
attention, with the activation x activation MatMuls quantized too. All files of a model are timed in turns in
ONNX Runtime (CPU, 1 and 2 threads) and compared on output SQNR against FP32 (crops of real photos).

    python benchmarks/qdq_placement.py [--models efficientnet_b0 mobilenet_v3_large convnext_tiny vit_b_16]

Writes benchmarks/results/qdq_placement.{csv,md}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _heldout import machine_line, write_csv
from any_model import IMAGENET, add_run_args, accuracy, build, crops, latencies, photos, run_all

from slimzoo.export import export_onnx
from slimzoo.quant import integer_layers, quantize_onnx
from slimzoo.quant import qdq
from slimzoo.storage import write_text

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_QUANT_IO = frozenset(qdq.QUANT_IO)
# variant -> (ops taken out of the integer set, activation MatMuls quantized, models it applies to or None: all)
VARIANTS = {
    "default": (set(), False, None),
    "Sigmoid + Mul in float": ({"Sigmoid", "Mul"}, False, None),
    "GlobalAveragePool in float": ({"GlobalAveragePool"}, False, None),
    "Add in float": ({"Add"}, False, None),
    "Concat in float": ({"Concat"}, False, {"googlenet", "squeezenet1_1", "densenet121", "shufflenet_v2_x1_0"}),
    "Softmax in float": ({"Softmax"}, False, {"vit_b_16"}),
    "activation MatMul integer": (set(), True, {"vit_b_16"}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*",
                    default=["efficientnet_b0", "mobilenet_v3_large", "regnet_y_400mf", "googlenet", "convnext_tiny",
                             "vit_b_16"])
    ap.add_argument("--num-calibration", type=int, default=32)
    ap.add_argument("--num-eval", type=int, default=64)
    add_run_args(ap, "runs/bench_qdq_placement")
    args = ap.parse_args()
    torch.set_num_threads(2)
    ph = photos()
    calib_x = crops(ph[0::2], args.num_calibration, 224, 300, IMAGENET)
    evals = crops(ph[1::2], args.num_eval, 224, 200, IMAGENET)
    calib = [torch.from_numpy(calib_x[i:i + 16]) for i in range(0, len(calib_x), 16)]
    rows = []
    for name in args.models:
        d = Path(args.work) / name
        d.mkdir(parents=True, exist_ok=True)
        model, outs, _ = build(name, crops(ph[0::2], 64, 224, 100, IMAGENET))
        fp32 = export_onnx(model, d / "fp32.onnx", torch.from_numpy(calib_x[:1]), output_names=outs)
        ref = run_all(fp32, evals)
        files, info = {"FP32": fp32}, {}
        for variant, (out_of, act_mm, only) in VARIANTS.items():
            if only is not None and name not in only:
                continue
            default_mm = dict(qdq.ACTIVATION_MATMUL)
            qdq.QUANT_IO, qdq.ACTIVATION_MATMUL = set(DEFAULT_QUANT_IO - out_of), {**default_mm, "onnxruntime": act_mm}
            try:
                path, _, _ = quantize_onnx(fp32, d / f"v{len(files)}.onnx", calib)
            finally:
                qdq.QUANT_IO, qdq.ACTIVATION_MATMUL = set(DEFAULT_QUANT_IO), default_mm
            c = integer_layers(path)
            files[variant] = path
            info[variant] = {"integer": f"{c.integer}/{c.total}", "act_matmul_float": c.activation_matmuls,
                             "sqnr_db": round(accuracy(ref, run_all(path, evals))["sqnr_db"], 2)}
        lat = latencies(files, args.rounds, args.runs)
        for variant in files:
            if variant == "FP32":
                continue
            rows.append({"model": name, "variant": variant, **info[variant],
                         "ort_t1_ms": lat[variant].get("ort_t1_ms"), "ort_t2_ms": lat[variant].get("ort_t2_ms"),
                         "fp32_t1_ms": lat["FP32"].get("ort_t1_ms"),
                         "t1_vs_default": round(lat[variant]["ort_t1_ms"] / lat["default"]["ort_t1_ms"], 3)})
            print(rows[-1], flush=True)
        write_csv(Path(args.out) / "qdq_placement.csv", rows)
    head = "| Model | Variant | Integer / all | Activation MatMuls in float | ORT T1 / T2 ms | T1 vs default | SQNR dB |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['integer']} | {r['act_matmul_float']} | "
                     f"{r['ort_t1_ms']:.2f} / {r['ort_t2_ms']:.2f} | {r['t1_vs_default']:.2f}x | {r['sqnr_db']:.1f} |")
    write_text(Path(args.out) / "qdq_placement.md",
               f"# QDQ placement, op class by op class\n\n{machine_line()}\n\n"
               f"`python benchmarks/qdq_placement.py --models {' '.join(args.models)}`\n\n"
               "T1 vs default: the variant's one-thread latency over the default placement's (above 1: slower). "
               "All files of a model were timed in turns in one run.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
