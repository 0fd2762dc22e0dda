"""Structured pruning beyond the zoo: torchvision architectures slimzoo was not built for.

Part 1, every architecture of the list (random weights, BatchNorm statistics warmed on crops of real photos):
uniform and sensitivity-chosen ratios at -30% and -50% FLOPs. Per run: success (or the error), FLOPs and
parameters removed, the layer groups left unpruned (and why), exact replay of the pruning record onto a fresh
model (max output difference), T1 latency of the pruned FP32 ONNX file against the unpruned one at 224x224 in
ONNX Runtime (timed in turns), and the pruned model quantized by slimzoo PTQ (T1, integer layers). The
sensitivity analysis of a random-weight network has no task metric, so it scores the cosine similarity of the
pruned network's outputs to the unpruned one's on 16 crops.

Part 2 (``--trained``), with a real accuracy signal: MobileNetV3-Small and RegNetY-400MF trained on the zoo's
synthetic classification set (benchmarks/_trained.py), pruned uniform vs sensitivity-chosen at -30%/-50%,
fine-tuned one epoch, Top-1 on the validation set.

    python benchmarks/prune_any_model.py [--models ...] [--trained] [--zoo runs/zoo]

Writes benchmarks/results/prune_any_model.{csv,md}; per-model results are cached in --work (resumable).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from _heldout import machine_line, write_csv
from any_model import IMAGENET, add_run_args, build, crops, latencies, photos

from slimzoo.export import export_onnx
from slimzoo.prune import PruneConfig, SensitivityConfig, prune, replay
from slimzoo.quant import PTQConfig, integer_layers, quantize
from slimzoo.storage import write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "mnasnet1_0",
          "shufflenet_v2_x1_0", "squeezenet1_1", "densenet121", "resnext50_32x4d", "convnext_tiny", "googlenet",
          "vit_b_16", "swin_t"]
TARGETS = (0.3, 0.5)


def _fresh(name: str, warm: np.ndarray):
    return build(name, warm)[0]


def _cosine_eval(reference: torch.Tensor, images: torch.Tensor):
    def evaluate(m) -> float:
        with torch.no_grad():
            out = m.eval()(images)
        return float(torch.nn.functional.cosine_similarity(out.flatten(1), reference.flatten(1)).mean())
    return evaluate


def bench_model(name: str, args, work: Path, ph) -> list[dict]:
    cache = work / f"{name}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    warm = crops(ph[0::2], 64, 224, 100, IMAGENET)
    model = _fresh(name, warm)
    size = 224 if name.startswith(("vit", "swin")) else args.prune_size
    x = torch.from_numpy(crops(ph[1::2], 1, size, 7, IMAGENET))
    evals = torch.from_numpy(crops(ph[1::2], 16, size, 8, IMAGENET))
    with torch.no_grad():
        ref = model(evals)
    calib = [torch.from_numpy(crops(ph[0::2], 32, 224, 9, IMAGENET))]
    x224 = torch.from_numpy(warm[:1])
    files = {"unpruned": export_onnx(model, d / "fp32.onnx", x224)}
    rows = []
    for target in TARGETS:
        for method in ("uniform", "sensitivity"):
            key = f"-{target:.0%} {method}"
            row = {"model": name, "target": target, "method": method}
            t0 = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    pruned, rec, info = prune(
                        model, x, PruneConfig(flops_reduction=target, method=method,
                                              sensitivity=SensitivityConfig(ratios=(0.25, 0.5, 0.75), stop_loss=1.0)),
                        evaluate=_cosine_eval(ref, evals), sensitivity_path=d / "sensitivity.json", progress=False)
                row.update(ok=True, flops_reduction=info["flops_reduction"], params_reduction=info["params_reduction"],
                           left_unpruned=len(info.get("left_unpruned", {})), round_to=info["round_to"],
                           prune_s=round(time.perf_counter() - t0, 1),
                           target_warning=any("asked for" in str(w.message) for w in caught),
                           target_missed_by=info.get("target_missed_by"))
                fresh = _fresh(name, warm)
                replay(fresh, rec)
                fresh.load_state_dict(pruned.state_dict())
                with torch.no_grad():
                    row["replay_max_diff"] = float((fresh(evals) - pruned(evals)).abs().max())
                files[key] = export_onnx(pruned, d / f"pruned{target:.0%}-{method}.onnx", x224)
                q = quantize(pruned, x224, calib, d / f"pruned{target:.0%}-{method}-int8.onnx",
                             PTQConfig(num_calibration=32), check=False)
                files[key + " + INT8"] = q
                c = integer_layers(q)
                row["int8_integer"] = f"{c.integer}/{c.total}"
            except Exception as e:  # noqa: BLE001 - a failure is a result of this benchmark
                row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:240]}")
                traceback.print_exc()
            rows.append(row)
            print(row, flush=True)
    lat = latencies(files, args.rounds, args.runs)
    base = lat["unpruned"].get("ort_t1_ms")
    for row in rows:
        key = f"-{row['target']:.0%} {row['method']}"
        if key in lat:
            row["t1_ms"], row["unpruned_t1_ms"] = lat[key]["ort_t1_ms"], base
            row["t1_speedup"] = round(base / lat[key]["ort_t1_ms"], 3)
            row["int8_t1_ms"] = lat[key + " + INT8"]["ort_t1_ms"]
            row["int8_t1_speedup"] = round(base / row["int8_t1_ms"], 3)
    write_json(cache, rows)
    return rows


def bench_trained(args, work: Path) -> list[dict]:
    """Uniform vs sensitivity on two torchvision models trained on synth-cls, one epoch of fine-tuning."""
    from _trained import trained

    from slimzoo.runtime import TorchPredictor
    from slimzoo.training import TrainConfig, fit
    from slimzoo.zoo import Zoo

    zoo = Zoo(Path(args.zoo))
    rows = []
    for name in ("mobilenet_v3_small", "regnet_y_400mf"):
        cache = work / f"trained-{name}.json"
        if cache.exists():
            rows += json.loads(cache.read_text())
            continue
        model, task = trained(zoo, name, Path(args.zoo) / "bench_trained")
        base = task.evaluate(TorchPredictor(model))["top1"]
        evaluate = lambda m: task.evaluate(TorchPredictor(m), limit=500)["top1"]  # noqa: E731
        mine = []
        for target in TARGETS:
            for method in ("uniform", "sensitivity"):
                pruned, rec, info = prune(model, task.example_inputs(), PruneConfig(flops_reduction=target,
                                                                                     method=method),
                                          evaluate=evaluate, sensitivity_path=work / f"trained-{name}-sens.json",
                                          progress=False)
                before = task.evaluate(TorchPredictor(pruned))["top1"]
                tuned = fit(copy.deepcopy(pruned), task.train_loader(64), task.loss_fn,
                            TrainConfig(epochs=1, lr=0.001, warmup_epochs=0.1), progress=False)
                after = task.evaluate(TorchPredictor(tuned))["top1"]
                mine.append({"model": name, "target": target, "method": method, "fp32_top1": base,
                             "flops_reduction": info["flops_reduction"], "top1_before_finetune": before,
                             "top1_after_finetune": after})
                print(mine[-1], flush=True)
        write_json(cache, mine)
        rows += mine
    return rows


def markdown(rows: list[dict], trained_rows: list[dict]) -> str:
    head = ["Model", "Target", "Method", "FLOPs / params removed", "Groups left unpruned", "Replay max diff",
            "T1 ms (unpruned)", "T1 speed-up", "+ INT8: T1 speed-up, integer layers", "Prune s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if not r.get("ok"):
            lines.append(f"| {r['model']} | -{r['target']:.0%} | {r['method']} | failed: {r['error']} |"
                         + " |" * (len(head) - 4))
            continue
        lines.append(" | ".join([
            f"| {r['model']}", f"-{r['target']:.0%}", r["method"],
            f"{r['flops_reduction']:.1%} / {r['params_reduction']:.1%}"
            + (" (!)" if abs(r["flops_reduction"] - r["target"]) > 0.02 else ""),
            str(r["left_unpruned"]), f"{r.get('replay_max_diff', float('nan')):.1e}",
            f"{r.get('t1_ms', float('nan')):.2f} ({r.get('unpruned_t1_ms', float('nan')):.2f})",
            f"{r.get('t1_speedup', float('nan')):.2f}x",
            f"{r.get('int8_t1_speedup', float('nan')):.2f}x, {r.get('int8_integer', '-')}", f"{r['prune_s']:.0f}"])
            + " |")
    if trained_rows:
        lines += ["", "Trained on synth-cls (4 epochs, 64x64), pruned, fine-tuned 1 epoch; Top-1 on the 1,000 "
                  "validation images:", "",
                  "| Model | Target | Method | FLOPs removed | FP32 Top-1 | Top-1 before / after fine-tuning |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | -{r['target']:.0%} | {r['method']} | {r['flops_reduction']:.1%} | "
                  f"{r['fp32_top1']:.2f} | {r['top1_before_finetune']:.2f} / {r['top1_after_finetune']:.2f} |"
                  for r in trained_rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--trained", action="store_true", help="also part 2 (trains two models on synth-cls if needed)")
    ap.add_argument("--zoo", default="runs/zoo", help="zoo output folder (synthetic data, trained models)")
    ap.add_argument("--prune-size", type=int, default=112,
                    help="input size the CNNs are traced and counted at (ViT/Swin: 224); FLOPs ratios do not depend "
                         "on it")
    add_run_args(ap, "runs/bench_prune_any_model")
    args = ap.parse_args()
    torch.set_num_threads(2)
    ph = photos()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        print(name, flush=True)
        rows += bench_model(name, args, work, ph)
        write_csv(Path(args.out) / "prune_any_model.csv", rows)
    trained_rows = bench_trained(args, work) if args.trained else []
    write_text(Path(args.out) / "prune_any_model.md",
               f"# Pruning on networks beyond the zoo\n\n{machine_line()}\n\n"
               f"`python benchmarks/prune_any_model.py --models {' '.join(args.models)}"
               f"{' --trained' if args.trained else ''}`\n\n"
               "Random weights (BatchNorm warmed on photo crops); latency at 224x224 in ONNX Runtime, files timed in "
               "turns; (!) marks a FLOPs reduction more than 2 points from the target.\n\n"
               + markdown(rows, trained_rows) + "\n")


if __name__ == "__main__":
    main()
