"""Top-1 of INT8 files made from a zoo classifier in different ways: PTQ with a given calibration, QAT
(60 steps) from ranges of a given calibration, QAT with learned ranges, PTQ with AdaRound. Prints one line
each: Top-1, change against FP32 with its 95% interval (paired over images), agreement with FP32.

    python benchmarks/quant_init_check.py --zoo runs/zoo --model resnet50 \
        ptq-percentile ptq-mse qat-mse qat-percentile qat-lsq qat-lsq-0.01 ada

Settings as the zoo's: 256 calibration images, batch 64, QAT at lr 1e-5, each file evaluated in ONNX
Runtime on the validation split widened to --num-val images (benchmarks/_heldout.py).
"""
import argparse
import time
from pathlib import Path

from _heldout import compare, heldout_task, predictions

from slimzoo.export import export_onnx
from slimzoo.quant import PTQConfig, quantize
from slimzoo.quant.qat import QATConfig, quantize_aware_train
from slimzoo.runtime import OnnxPredictor
from slimzoo.zoo import Zoo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--num-val", type=int, default=10000)
    ap.add_argument("--qat-steps", type=int, default=60)
    ap.add_argument("--out", default="/tmp")
    ap.add_argument("methods", nargs="+", help="ptq-<calibration> | qat-<calibration> | qat-lsq[-<range lr>] | ada")
    args = ap.parse_args()
    zoo = Zoo(Path(args.zoo), profile_name=args.profile)
    row_id = f"cls-{args.model}-none"
    model, task = zoo.baseline(row_id)
    val = heldout_task(zoo, row_id, args.num_val)
    ex = task.example_inputs()
    ref, true = predictions(val, OnnxPredictor(export_onnx(model, Path(args.out) / f"{args.model}_fp32.onnx", ex)))
    print(args.model, "fp32", f"{100 * (ref == true).mean():.2f}", flush=True)
    for what in args.methods:
        t = time.time()
        out = f"{args.out}/{args.model}_{what}.onnx"
        calib = task.calibration_batches(256, 32)
        if what == "ada":
            path = quantize(model, ex, calib, out, PTQConfig(adaround=True))
        elif what.startswith("ptq-"):
            path = quantize(model, ex, calib, out, PTQConfig(calibration=what[4:]))
        elif what.startswith("qat-"):
            spec = {"epochs": 1, "max_steps": args.qat_steps}
            if what.startswith("qat-lsq"):
                spec |= {"learn_ranges": True} | ({"range_lr": float(what[8:])} if what[8:] else {})
            else:
                spec |= {"calibration": {"calibration": what[4:]}}
            path, _ = quantize_aware_train(model, ex, task.train_loader(64), task.loss_fn, calib, out,
                                           QATConfig.from_dict(spec), progress=False)
        else:
            raise SystemExit(f"unknown method {what!r}")
        c = compare(predictions(val, OnnxPredictor(path))[0], ref, true)
        print(args.model, what, f"{c['top1']:.2f}", f"change {-c['drop']:+.2f} ± {c['drop_ci95']:.2f}",
              f"agree {c['agree']:.2f}%", f"{time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
