"""Seconds the zoo's pruning step takes before fine-tuning (sensitivity sweep, ratio search, pruning), per prune row,
on the FP32 baselines of a finished zoo run. Each row's sweep runs into a fresh temporary file (nothing reused), with
the row's own recipe settings, at two threads. Prints one JSON line per row with the chosen FLOPs reduction, so two
versions of the code can be run side by side and checked to choose the same ratios:

    python benchmarks/prune_step_time.py --label new >> benchmarks/results/prune_step_time.jsonl
    PYTHONPATH=/path/to/old/checkout python benchmarks/prune_step_time.py --label old >> ...
"""
import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch

import slimzoo
from slimzoo.prune import PruneConfig, prune
from slimzoo.runtime import TorchPredictor
from slimzoo.zoo import Zoo

ROWS = ["cls-mobilenet_v1-prune50", "det-yolov3_mobilenet_v1-coco-prune52", "seg-fast_scnn-prune48"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", type=Path, default=Path("runs/zoo"), help="a zoo folder holding the FP32 rows")
    ap.add_argument("--rows", nargs="+", default=ROWS)
    ap.add_argument("--label", default="", help="a name for this version of the code, copied into each line")
    args = ap.parse_args()
    torch.set_num_threads(2)
    zoo = Zoo(args.zoo, progress=False)
    for row in args.rows:
        r = zoo.recipe(row)
        model, task = zoo.model_of(r["base"])
        cfg = PruneConfig.from_dict(r["prune"])
        limit = cfg.sensitivity.eval_images
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            pruned, rec, info = prune(model, task.example_inputs(), cfg, sensitivity_path=Path(d) / "s.json",
                                      evaluate=lambda m: task.evaluate(TorchPredictor(m), limit=limit)[task.metric],
                                      metric_name=task.metric, progress=False)
            seconds = time.perf_counter() - t0
        sha = hashlib.sha256(json.dumps(rec.ratios, sort_keys=True).encode()).hexdigest()[:12]
        print(json.dumps({"label": args.label, "slimzoo": str(Path(slimzoo.__file__).parent), "row": row,
                          "seconds": round(seconds, 1), "evaluations": info.get("sensitivity_evaluations"),
                          "flops_reduction": info["flops_reduction"], "round_to": info["round_to"],
                          "ratios_sha": sha}),
              flush=True)


if __name__ == "__main__":
    main()
