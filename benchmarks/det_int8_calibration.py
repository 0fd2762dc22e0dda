"""INT8 calibration choices for the zoo's COCO-format detectors: each stored FP32 baseline of a finished zoo run
quantized under several PTQ settings, every INT8 file scored in ONNX Runtime on the 400 validation images. Prints
one JSON line per (row, variant); results in benchmarks/results/det_int8_calibration.jsonl (2026-12-02: the first
five variants on both detectors; 2026-12-03: bias correction of the depthwise convs, the PTQ default since, on and
off, on a retrained YOLOv3-MobileNetV1; 2026-12-04: the prediction convs in float, the default since, against
quantized).

    python benchmarks/det_int8_calibration.py >> benchmarks/results/det_int8_calibration.jsonl
    python benchmarks/det_int8_calibration.py --rows det-yolov3_mobilenet_v1-coco-none --variants mse minmax
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from slimzoo.quant import PTQConfig, quantize
from slimzoo.runtime import OnnxPredictor
from slimzoo.zoo import Zoo
from slimzoo.zoo.measure import machine_info

BASE = {"num_calibration": 128, "calibration_batch_size": 16}
VARIANTS = {"default (percentile 99.99, 128 images)": {},
            "256 images": {"num_calibration": 256},
            "mse": {"calibration": "mse"},
            "bias correction": {"bias_correction": True},
            "minmax": {"calibration": "minmax"},
            "percentile, no bias correction": {"bias_correction": False},
            "mse, no bias correction": {"calibration": "mse", "bias_correction": False},
            "minmax, no bias correction": {"calibration": "minmax", "bias_correction": False},
            # before 2026-12-04 the prediction convs were quantized too (output_convs="int8")
            "mse, output convs int8": {"calibration": "mse", "output_convs": "int8"},
            "minmax, no bias correction, output convs int8": {"calibration": "minmax", "bias_correction": False,
                                                              "output_convs": "int8"},
            "percentile, output convs int8": {"output_convs": "int8"}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=Path("runs/zoo"), help="a zoo folder holding the FP32 rows")
    ap.add_argument("--rows", nargs="+", default=["det-yolov3_mobilenet_v1-coco-none", "det-yolov3_resnet34-coco-none"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = Zoo(args.zoo)
    info = machine_info()
    for row in args.rows:
        model, task = zoo.baseline(row)
        fp32 = task.evaluate(model)["bbox_map"]
        for name in args.variants:
            cfg = PTQConfig.from_dict(BASE | VARIANTS[name])
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as d:
                p = quantize(model, task.example_inputs(),
                             task.calibration_batches(cfg.num_calibration, cfg.calibration_batch_size),
                             Path(d) / "q.onnx", cfg, check=False)
                m = task.evaluate(OnnxPredictor(p, threads=2))
            print(json.dumps({"date": info["date"], "cpu": f"{info['cpu']} ({info['cores']} cores)", "row": row,
                              "variant": name, "fp32_bbox_map": round(fp32, 2), "bbox_map": round(m["bbox_map"], 2),
                              "delta": round(m["bbox_map"] - fp32, 2), "ap50": round(m["ap50"], 2),
                              "seconds": round(time.perf_counter() - t0, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
