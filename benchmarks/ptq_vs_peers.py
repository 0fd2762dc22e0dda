"""slimzoo PTQ against the peers a user would pick instead, on the same FP32 models and images.

For each zoo classifier (the FP32 baselines that `make zoo` trained, trained here if missing):
  (a) slimzoo PTQ with its defaults,
  (b) ONNX Runtime `quantize_static`, its defaults and with per-channel weights,
  (c) NNCF `nncf.quantize` on the ONNX model with its defaults (if nncf is installed),
all calibrated on the same training images and evaluated in ONNX Runtime on the same
validation set. Writes benchmarks/results/ptq_vs_peers.{csv,md}.

    python benchmarks/ptq_vs_peers.py --zoo runs/zoo [--models mobilenet_v1 resnet50] [--num-calibration 256]
        [--num-val 10000]

Accuracy is measured on a validation split widened to --num-val images (benchmarks/_heldout.py), with the
paired 95% interval of each drop and of slimzoo's gap to the better peer, because on 1,000 images the
methods differ by a few images either way.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _heldout import (
    compare,
    heldout_task,
    machine_line,
    paired_gap,
    predictions,
    write_csv,
)

from slimzoo.bench import benchmark_latency, file_size_mb
from slimzoo.export import export_onnx
from slimzoo.runtime import OnnxPredictor
from slimzoo.storage import write_text
from slimzoo.zoo import Zoo

RESULTS = Path(__file__).resolve().parent / "results"


def slimzoo_ptq(**options):
    def run(model, task, fp32_path, out, calib):
        from slimzoo.quant import PTQConfig, quantize

        return quantize(model, task.example_inputs(), iter(calib), out, PTQConfig(**options), check=False)
    return run


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


METHODS = {"slimzoo (defaults)": slimzoo_ptq(), "onnxruntime quantize_static (defaults)": ort_ptq(False),
           "onnxruntime quantize_static (per-channel)": ort_ptq(True), "nncf.quantize (defaults)": nncf_ptq}
# --variants: slimzoo's options that are known to matter on Hardswish/SiLU networks (activation ranges with long
# negative tails, a bias shift the rounding causes), measured beside the defaults
VARIANTS = {"slimzoo (mse ranges)": slimzoo_ptq(calibration="mse"),
            "slimzoo (bias correction)": slimzoo_ptq(bias_correction=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo", help="zoo output folder holding the trained FP32 baselines")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--models", nargs="*", default=["mobilenet_v1", "mobilenet_v2", "resnet50"],
                    help="zoo classifiers, or torchvision:NAME for a torchvision architecture trained on the same "
                         "synthetic data (benchmarks/_trained.py)")
    ap.add_argument("--num-calibration", type=int, default=256)
    ap.add_argument("--num-val", type=int, default=10000,
                    help="validation images (synthetic data: the zoo's split widened to this many; 0: the zoo's)")
    ap.add_argument("--draws", type=int, default=1,
                    help="calibration draws: each method quantizes once per draw (another subset of the same size); "
                         "accuracy is the mean over draws")
    ap.add_argument("--bench-size", type=int, default=224)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="ptq_vs_peers", help="file stem of the results")
    ap.add_argument("--variants", action="store_true",
                    help="also slimzoo with MSE ranges and with bias correction (not counted as peers)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = Zoo(Path(args.zoo), profile_name=args.profile)
    rows, gaps = [], []
    for name in args.models:
        if name.startswith("torchvision:"):  # a torchvision architecture trained on the same synthetic data
            from _trained import trained

            row_id = "cls-mobilenet_v2-none"  # its data and resolution
            model, task = trained(zoo, name.split(":", 1)[1], Path(args.zoo) / "bench_trained")
        else:
            row_id = f"cls-{name}-none"
            model, task = zoo.baseline(row_id)
        val = heldout_task(zoo, row_id, args.num_val)
        # each draw: another spread-out subset of the training images, the same for every method
        calibs = [list(task.calibration_batches(args.num_calibration, 32, offset=k)) for k in range(args.draws)]
        preds = {}
        with tempfile.TemporaryDirectory() as d:
            fp32 = export_onnx(model, Path(d) / "fp32.onnx", task.example_inputs())
            ref, true = predictions(val, OnnxPredictor(fp32))
            lat = benchmark_latency(fp32, (1, 3, args.bench_size, args.bench_size), threads=(1, 2), runs=args.runs)
            rows.append({"model": name, "method": "FP32", **compare(ref, ref, true), "size_mb": file_size_mb(fp32),
                         "t1_ms": lat["1"]["median"], "t2_ms": lat["2"]["median"], "quant_s": 0.0})
            for method, fn in {**METHODS, **(VARIANTS if args.variants else {})}.items():
                out = Path(d) / f"{abs(hash(method))}.onnx"
                draws, secs = [], []
                try:
                    for k, calib in enumerate(calibs):
                        t0 = time.perf_counter()
                        fn(model, task, fp32, out, calib)
                        secs.append(time.perf_counter() - t0)
                        draws.append(predictions(val, OnnxPredictor(out))[0])
                        if k == 0:  # the file's speed does not depend on which images calibrated it
                            lat = benchmark_latency(out, (1, 3, args.bench_size, args.bench_size), threads=(1, 2),
                                                    runs=args.runs)
                            size = file_size_mb(out)
                except ImportError as e:
                    print(f"skipping {method}: {e}")
                    continue
                preds[method] = np.stack(draws)
                rows.append({"model": name, "method": method, **compare(preds[method], ref, true),
                             "size_mb": size, "t1_ms": lat["1"]["median"], "t2_ms": lat["2"]["median"],
                             "quant_s": float(np.mean(secs))})
                print(rows[-1], flush=True)
        ours = preds.get("slimzoo (defaults)")
        peers = {m: p for m, p in preds.items() if not m.startswith("slimzoo")}
        if ours is not None and peers:
            best = max(peers, key=lambda m: (peers[m] == true).mean())
            gap, ci = paired_gap(ours, peers[best], true)
            gaps.append({"model": name, "better_peer": best, "gap": gap, "gap_ci95": ci,
                         "agree": 100 * float((ours == ref).mean()),
                         "peer_agree": 100 * float((peers[best] == ref).mean())})
    out = Path(args.out)
    write_csv(out / f"{args.name}.csv", rows)
    n = rows[0]["num_images"]
    md = ["# PTQ: slimzoo vs peers", "",
          f"{machine_line()}; "
          f"{args.num_calibration} calibration images (training split; mean over {args.draws} draw(s) of them), "
          f"{n:,} validation images "
          f"(one image is {100 / n:.2f} points), latency at "
          f"{args.bench_size}x{args.bench_size}, batch 1, median of {args.runs}. "
          f"Command: `python benchmarks/ptq_vs_peers.py --zoo {args.zoo} --models {' '.join(args.models)} "
          f"--num-calibration {args.num_calibration} --num-val {args.num_val} --draws {args.draws} --name {args.name}"
          f"{' --variants' if args.variants else ''}`", "",
          "Drop: FP32 Top-1 minus INT8 Top-1 on the same images, with the 95% interval of that difference "
          "(paired over images). Agree: images on which the INT8 file predicts the FP32 model's class.", "",
          "| Model | Method | Top-1 | Drop | Agree (%) | Size (MB) | T1 (ms) | T2 (ms) | Quantize (s) |",
          "|---|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['method']} | {r['top1']:.2f} | {r['drop']:.2f} ± {r['drop_ci95']:.2f} | "
           f"{r['agree']:.2f} | {r['size_mb']:.2f} | {r['t1_ms']:.2f} | {r['t2_ms']:.2f} | {r['quant_s']:.1f} |"
           for r in rows]
    if gaps:
        md += ["", "slimzoo against the better peer (the peer with the higher Top-1 on these images): Top-1 of "
               "slimzoo minus the peer's, with its 95% interval (paired over images; an interval that holds 0 "
               "means the two cannot be told apart on this many images).", "",
               "| Model | Better peer | slimzoo minus peer (Top-1) | Agree with FP32: slimzoo / peer (%) |",
               "|---|---|---|---|"]
        md += [f"| {g['model']} | {g['better_peer']} | {g['gap']:+.2f} ± {g['gap_ci95']:.2f} | "
               f"{g['agree']:.2f} / {g['peer_agree']:.2f} |" for g in gaps]
    write_text(out / f"{args.name}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
