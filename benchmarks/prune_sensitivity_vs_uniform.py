"""Sensitivity-chosen vs uniform pruning ratios on MobileNetV1, with the same fine-tuning budget.

For each FLOPs target (default -30% and -50%) and each method, the zoo's prune row recipe is run
(sensitivity rows are the zoo's own `cls-mobilenet_v1-prune30/50`; uniform rows are the same
recipes with `method: uniform`), optionally over several fine-tuning seeds. Every figure comes
from running the pruned, fine-tuned FP32 ONNX file in ONNX Runtime. Rows are cached in the zoo's
output folder, so a rerun only computes what is missing. Writes
benchmarks/results/prune_sensitivity_vs_uniform.{csv,md}.

    python benchmarks/prune_sensitivity_vs_uniform.py --zoo runs/zoo [--targets 30 50] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import csv
import shutil
import statistics
import tempfile
from pathlib import Path

import yaml

from slimzoo.storage import write_text
from slimzoo.zoo import RECIPES_DIR, Zoo, machine_info

RESULTS = Path(__file__).resolve().parent / "results"


def _variant(recipes: Path, target: int, method: str, seed: int) -> str:
    """Write the recipe of one (target, method, seed) variant next to the zoo's recipes; return its row id."""
    base_id = f"cls-mobilenet_v1-prune{target}"
    r = yaml.safe_load((RECIPES_DIR / f"{base_id}.yaml").read_text())
    if method == "sensitivity" and seed == 0:
        return base_id  # the zoo's own row
    r["id"] = f"{base_id}-{method}-s{seed}"
    r["prune"]["method"] = method
    r["finetune"]["seed"] = seed
    (recipes / f"{r['id']}.yaml").write_text(yaml.safe_dump(r, sort_keys=False))
    return r["id"]


def _finetuned_fp32(zoo: Zoo, prune_row: str) -> dict:
    """The unpruned FP32 model fine-tuned with the prune rows' budget: the fair reference for their Top-1."""
    import torch

    from slimzoo.export import export_onnx
    from slimzoo.runtime import OnnxPredictor
    from slimzoo.storage import read_json, write_json
    from slimzoo.training import TrainConfig, fit

    r = zoo.recipe(prune_row)
    tcfg = TrainConfig.from_dict(r["finetune"])
    out = zoo.out / "bench" / "mobilenet_v1-fp32-finetuned"
    key = {"finetune": tcfg.to_dict(), "base": read_json(zoo.out / "models" / r["base"] / "config.json")["key"]}
    if (out / "result.json").is_file() and read_json(out / "result.json")["key"] == key:
        return read_json(out / "result.json")
    model, task = zoo.model_of(r["base"])
    torch.manual_seed(tcfg.seed)
    model = fit(model, task.train_loader(tcfg.batch_size), task.loss_fn, tcfg, state_path=out / "state.pt")
    path = export_onnx(model, out / "model_fp32.onnx", task.example_inputs())
    res = {"key": key, "top1": task.evaluate(OnnxPredictor(path, threads=2))["top1"], "epochs": tcfg.epochs}
    write_json(out / "result.json", res)
    (out / "state.pt").unlink(missing_ok=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo", help="zoo output folder (baselines and rows are reused)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--targets", type=int, nargs="+", default=[30, 50], help="FLOPs reductions in percent")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds per variant")
    ap.add_argument("--name", default="prune_sensitivity_vs_uniform")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        recipes = Path(d)
        for p in RECIPES_DIR.glob("*.yaml"):
            shutil.copy(p, recipes / p.name)
        plan = [(t, m, s, _variant(recipes, t, m, s)) for t in args.targets for m in ("sensitivity", "uniform")
                for s in args.seeds]
        zoo = Zoo(Path(args.zoo), profile_name=args.profile, recipes_dir=recipes)
        fp32 = zoo.run_row("cls-mobilenet_v1-none")
        rows = [(t, m, s, zoo.run_row(row_id)) for t, m, s, row_id in plan]
        control = _finetuned_fp32(zoo, plan[0][3])

    fields = ["target_flops_reduction", "method", "seed", "flops_reduction", "top1", "delta_top1",
              "top1_before_finetune", "size_mb", "t1_ms", "t2_ms", "t4_ms", "speedup_t1", "sensitivity_evals",
              "reference_evals"]
    table = []
    for t, m, s, r in [(None, "FP32", None, fp32)] + rows:
        p = r.get("pruning") or {}
        lat = r["latency_ms"]
        table.append({"target_flops_reduction": f"-{t}%" if t else "", "method": m, "seed": "" if s is None else s,
                      "flops_reduction": p.get("flops_reduction", 0.0), "top1": r["metric"]["value"],
                      "delta_top1": r["metric"]["delta"], "top1_before_finetune": p.get("metric_before_finetune", ""),
                      "size_mb": r["size_mb"], "t1_ms": lat["1"], "t2_ms": lat["2"], "t4_ms": lat["4"],
                      "speedup_t1": round(fp32["latency_ms"]["1"] / lat["1"], 2),
                      "sensitivity_evals": p.get("sensitivity_evaluations", ""),
                      "reference_evals": p.get("reference_evaluations", "")})
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{args.name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(table)

    mi = machine_info()
    md = ["# MobileNetV1: sensitivity-chosen vs uniform pruning ratios", "",
          f"`python benchmarks/prune_sensitivity_vs_uniform.py --zoo {args.zoo} --targets "
          f"{' '.join(map(str, args.targets))} --seeds {' '.join(map(str, args.seeds))}`, {mi['date']}, "
          f"{mi['cpu']} ({mi['cores']} cores), ONNX Runtime {mi['onnxruntime']}.", "",
          "Same FP32 model, L1 filter ranking, channels rounded to multiples of 8, and the same fine-tuning "
          "(the recipe's `finetune`) for both methods. Top-1 from the pruned, fine-tuned FP32 ONNX file in ONNX "
          "Runtime on the whole validation set (synthetic 10-class, 64x64); latency at 224x224, batch 1, median.",
          "", "| Target | Method | Seed | FLOPs removed | Top-1 (change) | Top-1 before fine-tune | Size MB | "
          "T1 / T2 / T4 ms | T1 speed-up | Sensitivity evals (reference) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        evals = f"{row['sensitivity_evals']} ({row['reference_evals']})" if row["sensitivity_evals"] else ""
        md.append(f"| {row['target_flops_reduction']} | {row['method']} | {row['seed']} | "
                  f"{row['flops_reduction']:.1%} | {row['top1']:.2f} ({row['delta_top1']:+.2f}) | "
                  f"{row['top1_before_finetune']} | {row['size_mb']:.2f} | {row['t1_ms']:.2f} / {row['t2_ms']:.2f} / "
                  f"{row['t4_ms']:.2f} | {row['speedup_t1']:.2f}x | {evals} |")
    md += ["", f"The FP32 model fine-tuned with the same budget ({control['epochs']} epochs, no pruning) reaches "
           f"{control['top1']:.2f}: the baseline is not fully converged, so part of the pruned rows' Top-1 is that "
           "extra training. The last column measures pruning against that equally trained model.", "",
           "Mean Top-1 over seeds:", "",
           "| Target | Sensitivity | Uniform | Sensitivity - uniform | Sensitivity vs fine-tuned FP32 |",
           "|---|---|---|---|---|"]
    for t in args.targets:
        mean = {m: statistics.mean(r["metric"]["value"] for tt, mm, _, r in rows if tt == t and mm == m)
                for m in ("sensitivity", "uniform")}
        md.append(f"| -{t}% | {mean['sensitivity']:.2f} | {mean['uniform']:.2f} | "
                  f"{mean['sensitivity'] - mean['uniform']:+.2f} | {mean['sensitivity'] - control['top1']:+.2f} |")
    write_text(RESULTS / f"{args.name}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
