"""The zoo's classification rows re-evaluated on a larger validation set, with the noise of each change.

The zoo scores each row on 1,000 validation images, where one image is 0.1 Top-1 points and an INT8 file's
change against its FP32 model moves by a few images with rounding luck alone. This takes the deployable files
a `make zoo` run wrote (nothing is retrained or re-quantized) and scores every compressed classification row
and its base on the validation split widened to --num-val images (benchmarks/_heldout.py): Top-1, the change
against the base with its 95% interval (paired over images), and how often the two predict the same class.

    python benchmarks/zoo_heldout.py --zoo runs/zoo [--num-val 10000] [--strategies quant qat prune]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _heldout import compare, heldout_task, machine_line, predictions, write_csv

from slimzoo.runtime import OnnxPredictor
from slimzoo.storage import read_json, write_text
from slimzoo.zoo import Zoo

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo", help="output folder of a finished `make zoo` / `slimzoo zoo` run")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--num-val", type=int, default=10000)
    ap.add_argument("--strategies", nargs="*", default=["quant", "qat"], help="row strategies to re-evaluate")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="zoo_heldout")
    args = ap.parse_args()
    zoo = Zoo(Path(args.zoo), profile_name=args.profile)
    results = Path(args.zoo) / "results.json"
    if not results.is_file():
        raise SystemExit(f"{results}: not found; run `make zoo` (or `slimzoo zoo --out {args.zoo}`) first")
    rows = {r["id"]: r for r in read_json(results)["rows"]}
    todo = [r for r in rows.values() if r["task"] == "classification" and r["strategy"] in args.strategies]
    if not todo:
        raise SystemExit(f"{results}: no classification rows with strategy {args.strategies}")
    table, cache = [], {}

    def preds(row_id: str, task):
        if row_id not in cache:
            path = Path(rows[row_id]["file"])
            if not path.is_file():
                raise SystemExit(f"{path}: the file of row {row_id} is missing; rerun the zoo")
            cache[row_id] = predictions(task, OnnxPredictor(path))
        return cache[row_id]

    for r in todo:
        base = r["base"]
        task = heldout_task(zoo, base, args.num_val)
        ref, true = preds(base, task)
        pred, _ = preds(r["id"], task)
        c = compare(pred, ref, true)
        table.append({"row": r["id"], "base": base, "label": r.get("label", r["strategy"]),
                      "zoo_change": r["metric"]["value"] - rows[base]["metric"]["value"], "base_top1": 100 * float((ref == true).mean()),
                      "top1": c["top1"], "change": -c["drop"], "change_ci95": c["drop_ci95"], "agree": c["agree"],
                      "num_images": c["num_images"]})
        print(table[-1], flush=True)
    out = Path(args.out)
    write_csv(out / f"{args.name}.csv", table)
    n = table[0]["num_images"]
    md = ["# Zoo classification rows on a larger validation set", "",
          f"{machine_line()}. The files of the "
          f"zoo run in `{args.zoo}`, evaluated on {n:,} validation images (the zoo's 1,000 and {n - 1000:,} more "
          f"from the same generator). Command: `python benchmarks/zoo_heldout.py --zoo {args.zoo} "
          f"--num-val {args.num_val} --strategies {' '.join(args.strategies)}`", "",
          "Change: Top-1 of the row minus its base's, on the same images, with the 95% interval of that "
          "difference (paired over images). Agree: images on which the row predicts its base's class. "
          "Zoo change: the same difference (row minus its base) on the zoo's 1,000 images; the zoo table's own "
          "change column is against the FP32 model, which differs for rows built on a pruned model.", "",
          "| Row | Base | Base Top-1 | Top-1 | Change | Zoo change | Agree (%) |", "|---|---|---|---|---|---|---|"]
    md += [f"| {t['row']} | {t['base']} | {t['base_top1']:.2f} | {t['top1']:.2f} | "
           f"{t['change']:+.2f} ± {t['change_ci95']:.2f} | {t['zoo_change']:+.2f} | {t['agree']:.2f} |"
           for t in table]
    write_text(out / f"{args.name}.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
