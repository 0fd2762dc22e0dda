"""One training step of the zoo's models, float32 vs bf16 autocast (channels_last), the latter with every layer in
bf16 and with the depthwise convs kept in float32 (what `fit` does under `amp`), and the data loading of a detector
batch: the figures behind the recipes' `amp` choices (docs/detection.md). Fastest of 3 steps after a warm-up.

    python benchmarks/train_step_time.py [--threads 2] [--out benchmarks/results/train_step_time.jsonl]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from slimzoo.models import create_model
from slimzoo.training import depthwise_in_float32
from slimzoo.zoo.measure import machine_info


def step_seconds(model, x, loss_of, amp: bool, depthwise_fp32: bool = False, steps: int = 3) -> float:
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    times = []
    with depthwise_in_float32(model, depthwise_fp32):
        for _ in range(steps + 1):  # the first step warms up
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            loss = loss_of(out)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t)
    return min(times[1:])  # the fastest step: the least disturbed by other work on a shared machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the zoo trains on 2)")
    ap.add_argument("--out", default="benchmarks/results/train_step_time.jsonl")
    ap.add_argument("--zoo", default="runs/zoo", help="a zoo folder holding synth-det-coco (for the loading figure)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = {"yolov3_mobilenet_v1 (128x128, batch 16)": ("yolov3_mobilenet_v1", 6, (16, 3, 128, 128)),
             "mobilenet_v1 (64x64, batch 64)": ("mobilenet_v1", 10, (64, 3, 64, 64)),
             "yolov3_resnet34 (128x128, batch 16)": ("yolov3_resnet34", 6, (16, 3, 128, 128)),
             "mobilenet_v1 (64x64, batch 64)": ("mobilenet_v1", 10, (64, 3, 64, 64)),
             "mobilenet_v2 (64x64, batch 64)": ("mobilenet_v2", 10, (64, 3, 64, 64)),
             "deeplabv3_mobilenet_v2 (128x256, batch 16)": ("deeplabv3_mobilenet_v2", 8, (16, 3, 128, 256)),
             "fast_scnn (128x256, batch 16)": ("fast_scnn", 8, (16, 3, 128, 256))}
    lines = [{"threads": args.threads, **{k: v for k, v in machine_info().items() if k in ("cpu", "torch", "date")}}]
    for name, (model_name, classes, shape) in cases.items():
        torch.manual_seed(0)
        m = create_model(model_name, num_classes=classes).train().to(memory_format=torch.channels_last)
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, classes, (shape[0],))
        if model_name.startswith("yolov3"):
            def loss_of(out):
                return sum(o.float().square().mean() for o in out["maps"])
        elif model_name.startswith(("deeplab", "fast_scnn")):
            def loss_of(out):
                return out.float().square().mean()
        else:
            def loss_of(out):
                return F.cross_entropy(out.float(), y)
        res = {"model": name, "float32_s": step_seconds(m, x, loss_of, False),
               "bf16_autocast_s": step_seconds(m, x, loss_of, True),
               "bf16_depthwise_fp32_s": step_seconds(m, x, loss_of, True, depthwise_fp32=True)}
        lines.append({k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()})
        print(json.dumps(lines[-1]), flush=True)
    roots = sorted((Path(args.zoo) / "data").glob("synth-det-coco-*"))
    if roots:
        from slimzoo.tasks import get_task

        task = get_task("detection", data_root=roots[0], image_size=128, num_workers=0)
        it = iter(task.train_loader(16))
        t = time.perf_counter()
        for _ in range(5):
            next(it)
        lines.append({"detector batch of 16 loaded and augmented, s": round((time.perf_counter() - t) / 5, 3)})
        print(json.dumps(lines[-1]))
    Path(args.out).write_text("".join(json.dumps(x) + "\n" for x in lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
