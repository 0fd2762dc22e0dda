"""INT8 calibration choices for the zoo's two COCO-format detectors: each stored FP32 baseline of a finished zoo run
quantized under five PTQ settings, every INT8 file scored in ONNX Runtime on the 400 validation images. Prints one
JSON line per (row, variant); results of 2026-12-02 in benchmarks/results/det_int8_calibration.jsonl.

    python benchmarks/det_int8_calibration.py > benchmarks/results/det_int8_calibration.jsonl
"""
import json
import tempfile
from pathlib import Path

import torch

from slimzoo.zoo import Zoo
from slimzoo.quant import PTQConfig, quantize
from slimzoo.runtime import OnnxPredictor
torch.set_num_threads(2)
zoo = Zoo(Path("runs/zoo"))
variants = {"default (percentile 99.99, 128 images)": {"num_calibration": 128, "calibration_batch_size": 16},
            "256 images": {"num_calibration": 256, "calibration_batch_size": 16},
            "mse": {"num_calibration": 128, "calibration_batch_size": 16, "calibration": "mse"},
            "bias correction": {"num_calibration": 128, "calibration_batch_size": 16, "bias_correction": True},
            "minmax": {"num_calibration": 128, "calibration_batch_size": 16, "calibration": "minmax"}}
for row in ("det-yolov3_mobilenet_v1-coco-none", "det-yolov3_resnet34-coco-none"):
    model, task = zoo.baseline(row)
    for name, v in variants.items():
        cfg = PTQConfig.from_dict(v)
        with tempfile.TemporaryDirectory() as d:
            p = quantize(model, task.example_inputs(), task.calibration_batches(cfg.num_calibration, cfg.calibration_batch_size), Path(d) / "q.onnx", cfg, check=False)
            m = task.evaluate(OnnxPredictor(p, threads=2))
        print(json.dumps({"row": row, "variant": name, "bbox_map": round(m["bbox_map"], 2), "ap50": round(m["ap50"], 2)}), flush=True)
