"""Top-1 of INT8 files made from a zoo classifier with different starting points: PTQ with a given
calibration, QAT (60 steps) from ranges of a given calibration, PTQ with AdaRound. Prints one line each.

    python benchmarks/quant_init_check.py --zoo runs/zoo --model resnet50 ptq-percentile ptq-mse qat-mse qat-percentile ada

Settings as the zoo's: 256 calibration images, batch 64, evaluation of each file in ONNX Runtime.
"""
import argparse
import glob
import time

from slimzoo.checkpoint import load_checkpoint
from slimzoo.quant import PTQConfig, quantize
from slimzoo.quant.qat import QATConfig, quantize_aware_train
from slimzoo.runtime import OnnxPredictor
from slimzoo.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--out", default="/tmp")
    ap.add_argument("methods", nargs="+", help="ptq-<calibration> | qat-<calibration> | ada")
    args = ap.parse_args()
    model, _ = load_checkpoint(f"{args.zoo}/models/cls-{args.model}-none")
    task = get_task("classification", data_root=glob.glob(f"{args.zoo}/data/synth-cls-*")[0], image_size=64,
                    batch_size=64)
    ex = task.example_inputs()
    for what in args.methods:
        t = time.time()
        out = f"{args.out}/{args.model}_{what}.onnx"
        if what == "ada":
            path = quantize(model, ex, task.calibration_batches(256, 32), out, PTQConfig(adaround=True))
        elif what.startswith("ptq-"):
            path = quantize(model, ex, task.calibration_batches(256, 32), out, PTQConfig(calibration=what[4:]))
        elif what.startswith("qat-"):
            cfg = QATConfig.from_dict({"epochs": 1, "max_steps": 60, "calibration": {"calibration": what[4:]}})
            path, _ = quantize_aware_train(model, ex, task.train_loader(64), task.loss_fn,
                                           task.calibration_batches(256, 32), out, cfg, progress=False)
        else:
            raise SystemExit(f"unknown method {what!r}")
        print(args.model, what, round(task.evaluate(OnnxPredictor(path))["top1"], 2), f"{time.time() - t:.0f}s",
              flush=True)


if __name__ == "__main__":
    main()
