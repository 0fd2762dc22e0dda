"""Which activation ranges generalise: percentile, MSE and min-max on networks beyond the zoo, scored on photos the
ranges were calibrated on and on photos they were not.

The FP32 files of ``benchmarks/any_model.py`` (its --work folder) are quantized by slimzoo PTQ with each range
method (int8 stem, so the stem decision does not vary with timing). Per model, method and calibration draw:
output SQNR and top-1 agreement with FP32 on 200 crops of the *other* photos (as in any_model.py), and SQNR on
the held-out half of the calibration crops, with ranges calibrated on the first half (the only check a choice
made on the user's calibration images could run).

    python benchmarks/range_methods_any_model.py [--models densenet121 squeezenet1_1 ...] [--draws 2]

Writes benchmarks/results/range_methods_any_model.{csv,md}.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch
from _heldout import machine_line, write_csv
from any_model import CROP_MIN, IMAGENET, accuracy, crops, photos, run_all

from slimzoo.quant import PTQConfig
from slimzoo.quant.ptq import prepare_ptq
from slimzoo.quant.qdq import write_qdq
from slimzoo.quant.range_choice import output_sqnr
from slimzoo.storage import write_text

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["densenet121", "squeezenet1_1", "shufflenet_v2_x1_0", "custom_two_outputs"]
METHODS = ("percentile", "mse", "minmax")


def _int8(fp32: Path, images: np.ndarray, method: str, out: Path) -> Path:
    batches = [images[i:i + 16] for i in range(0, len(images), 16)]
    prep = prepare_ptq(fp32, batches, PTQConfig(calibration=method, stem="int8", num_calibration=len(images)))
    return write_qdq(prep.model, prep.plan, prep.qparams, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--num-calibration", type=int, default=64)
    ap.add_argument("--work", default="runs/bench_any_model", help="any_model.py's work folder (FP32 files)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    ph = photos()
    calib_photos, eval_photos = ph[0::2], ph[1::2]  # as any_model.py splits them
    rows = []
    for name in args.models:
        fp32 = Path(args.work) / name / "fp32.onnx"
        if not fp32.is_file():
            raise SystemExit(f"{fp32}: missing; run benchmarks/any_model.py --models {name} first")
        ms = ([0.5] * 3, [0.5] * 3) if name == "efficientnet_lite0" else IMAGENET
        evals = crops(eval_photos, 200, 224, 200, ms, CROP_MIN)
        ref = run_all(fp32, evals)
        for draw in range(args.draws):
            cx = crops(calib_photos, args.num_calibration, 224, 300 + draw, ms, CROP_MIN)
            first, second = cx[0::2], cx[1::2]
            ref_second = run_all(fp32, second)
            for method in METHODS:
                tmp = Path(args.work) / name / f"range-{method}.onnx"
                a = accuracy(ref, run_all(_int8(fp32, cx, method, tmp), evals))
                held = output_sqnr(ref_second, run_all(_int8(fp32, first, method, tmp), second))
                rows.append({"model": name, "draw": draw, "method": method, "sqnr_other_photos_db": a["sqnr_db"],
                             "agreement_other_photos": a["agreement"], "sqnr_heldout_half_db": round(held, 2)})
                print(rows[-1], flush=True)
                tmp.unlink(missing_ok=True)
        write_csv(Path(args.out) / "range_methods_any_model.csv", rows)
    lines = ["| Model | Ranges | SQNR, other photos (dB) | Agreement, other photos (%) | SQNR, held-out half of the "
             "calibration crops (dB) |", "|---|---|---|---|---|"]
    for name in args.models:
        for method in METHODS:
            rs = [r for r in rows if r["model"] == name and r["method"] == method]
            def cell(k: str, rs=rs) -> str:
                return " / ".join(f"{r[k]:.2f}" for r in rs) + f" (mean {statistics.mean(r[k] for r in rs):.2f})"
            lines.append(f"| {name} | {method} | {cell('sqnr_other_photos_db')} | {cell('agreement_other_photos')} | "
                         f"{cell('sqnr_heldout_half_db')} |")
    write_text(Path(args.out) / "range_methods_any_model.md",
               f"# Activation ranges on photos calibrated on and not\n\n{machine_line()}\n\n"
               f"`python benchmarks/range_methods_any_model.py --models {' '.join(args.models)} --draws {args.draws} "
               f"--num-calibration {args.num_calibration}`\n\nRandom-weight networks of `benchmarks/any_model.py` "
               "(its FP32 files), int8 stem; per draw, then the mean. \"Other photos\": 200 crops of the photos "
               "not used for calibration (as in any_model.py); \"held-out half\": ranges from one half of the "
               "calibration crops, SQNR on the other half.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
