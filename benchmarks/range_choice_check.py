"""calibration="auto" against its two candidates, on torchvision networks trained on the synthetic classification set.

For each model (trained like benchmarks/_trained.py, cached in --zoo/bench_trained): slimzoo PTQ with percentile
ranges, MSE ranges and ``calibration="auto"`` (which keeps whichever of the two agrees more with FP32 on the
calibration images, slimzoo.quant.range_choice), 256 calibration images, Top-1 drop and agreement with FP32 on
--num-val held-out synthetic images.

    python benchmarks/range_choice_check.py --zoo runs/zoo [--models mobilenet_v3_small efficientnet_b0]

Writes benchmarks/results/range_choice_check.md.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _heldout import heldout_task, machine_line, predictions
from _trained import trained

from slimzoo.export import export_onnx, fold_batchnorm
from slimzoo.quant import PTQConfig
from slimzoo.quant.ptq import prepare_ptq
from slimzoo.quant.qdq import write_qdq
from slimzoo.runtime import OnnxPredictor
from slimzoo.storage import write_text
from slimzoo.zoo import Zoo

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo")
    ap.add_argument("--models", nargs="*", default=["mobilenet_v3_small", "efficientnet_b0"])
    ap.add_argument("--num-val", type=int, default=3000)
    ap.add_argument("--num-calibration", type=int, default=256)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = Zoo(Path(args.zoo), profile_name="default")
    lines = ["| Model | Ranges | Chosen by auto | Top-1 FP32 | Drop | Agree with FP32 (%) |", "|---|---|---|---|---|---|"]
    for name in args.models:
        model, task = trained(zoo, name, Path(args.zoo) / "bench_trained")
        val = heldout_task(zoo, "cls-mobilenet_v2-none", args.num_val)
        calib = [b[0] if isinstance(b, (list, tuple)) else b
                 for b in task.calibration_batches(args.num_calibration, 32)]
        with tempfile.TemporaryDirectory() as d:
            fp32 = export_onnx(fold_batchnorm(model), Path(d) / "fp32.onnx", task.example_inputs())
            ref, true = predictions(val, OnnxPredictor(fp32))
            for method in ("percentile", "mse", "auto"):
                prep = prepare_ptq(fp32, calib, PTQConfig(calibration=method, num_calibration=args.num_calibration))
                out = write_qdq(prep.model, prep.plan, prep.qparams, Path(d) / f"{method}.onnx")
                pred, _ = predictions(val, OnnxPredictor(out))
                chosen = prep.range_choice["chosen"] if prep.range_choice else "-"
                lines.append(f"| {name} | {method} | {chosen} | {100 * (ref == true).mean():.2f} | "
                             f"{100 * ((ref == true).mean() - (pred == true).mean()):.2f} | "
                             f"{100 * (pred == ref).mean():.2f} |")
                print(lines[-1], flush=True)
    cmd = f"python benchmarks/range_choice_check.py --zoo {args.zoo} --models {' '.join(args.models)} " \
          f"--num-val {args.num_val} --num-calibration {args.num_calibration}"
    write_text(Path(args.out) / "range_choice_check.md",
               f"# calibration=\"auto\": percentile or MSE ranges, chosen on the calibration images\n\n"
               f"{machine_line()}; `{cmd}`; {args.num_val:,} held-out images (one image is "
               f"{100 / args.num_val:.3f} points), one calibration draw.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
