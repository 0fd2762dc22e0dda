"""One training step of the zoo's models, float32 vs bf16 autocast (channels_last), and the data loading of a
detector batch: the figures behind the recipes' `amp` choices (docs/detection.md). One thread by default.

    python benchmarks/train_step_time.py [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from slimzoo.models import create_model


def step_seconds(model, x, loss_of, amp: bool, steps: int = 3) -> float:
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    for i in range(steps + 1):  # the first step warms up
        if i == 1:
            t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss = loss_of(out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--zoo", default="runs/zoo", help="a zoo folder holding synth-det-coco (for the loading figure)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = {"yolov3_mobilenet_v1 (128x128, batch 16)": ("yolov3_mobilenet_v1", 6, (16, 3, 128, 128)),
             "mobilenet_v1 (64x64, batch 64)": ("mobilenet_v1", 10, (64, 3, 64, 64)),
             "mobilenet_v2 (64x64, batch 64)": ("mobilenet_v2", 10, (64, 3, 64, 64))}
    for name, (model_name, classes, shape) in cases.items():
        torch.manual_seed(0)
        m = create_model(model_name, num_classes=classes).train().to(memory_format=torch.channels_last)
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, classes, (shape[0],))
        if model_name.startswith("yolov3"):
            def loss_of(out):
                return sum(o.float().square().mean() for o in out["maps"])
        else:
            def loss_of(out):
                return F.cross_entropy(out.float(), y)
        res = {amp: round(step_seconds(m, x, loss_of, amp), 3) for amp in (False, True)}
        print(json.dumps({"model": name, "float32_s": res[False], "bf16_autocast_s": res[True]}), flush=True)
    roots = sorted((Path(args.zoo) / "data").glob("synth-det-coco-*"))
    if roots:
        from slimzoo.tasks import get_task

        task = get_task("detection", data_root=roots[0], image_size=128, num_workers=0)
        it = iter(task.train_loader(16))
        t = time.perf_counter()
        for _ in range(5):
            next(it)
        print(json.dumps({"detector batch of 16 loaded and augmented, s": round((time.perf_counter() - t) / 5, 3)}))


if __name__ == "__main__":
    main()
