"""The zoo runner: walks each row's chain of base rows, runs the row's strategy, evaluates and times the file it
produces, and writes ``OUT/rows/<id>.json``, ``results.json``, ``ZOO.md`` and ``report.html``, resumably.

Each finished row is stored with a hash of its resolved recipe and its bases'; a rerun reuses every row whose
recipe has not changed. Models are stored by :class:`~slimzoo.zoo.artifacts.ModelStore`.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError
from ..storage import read_json, write_json, write_text
from .artifacts import ModelStore
from .measure import benchmark_file, machine_info, peak_rss_mb, reset_peak_rss, synthesize
from .recipes import (RECIPES_DIR, check_overrides, config_hash, load_profile, load_recipes, load_reference,
                      resolve_recipe, resolved_configs)
from .results import RESULTS_VERSION, render_zoo_md, row_label, table_order
from .strategies import STRATEGIES


@dataclass
class Zoo(ModelStore):
    """Runs zoo rows into ``out``; ``data_roots`` maps a dataset name to a user's own dataset folder."""

    out: Path
    profile_name: str = "default"
    recipes_dir: Path = RECIPES_DIR
    data_roots: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)  # FP32 row id -> the user's own trained weights
    overrides: dict = field(default_factory=dict)  # merged into every row recipe last (e.g. {"image_size": 224})
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        self.recipes = load_recipes(self.recipes_dir)
        self.profile = load_profile(self.profile_name, self.recipes_dir)
        check_overrides(self.overrides)
        fp32 = sorted(i for i, r in self.recipes.items() if r["strategy"] == "none")
        for row_id in self.weights:
            if row_id not in fp32:
                raise ConfigError(f"--weights {row_id}=...: no FP32 ('none') row {row_id!r}; rows that take "
                                  f"weights: {', '.join(fp32)}")
        datasets = sorted({r["dataset"] for r in self.recipes.values()})
        for name in self.data_roots:
            if name not in datasets:
                raise ConfigError(f"--data-root {name}=...: no row uses a dataset {name!r}; datasets: "
                                  f"{', '.join(datasets)}")
        self._results: dict[str, dict] = {}
        self._forced: set[str] = set()
        self._stages: list[dict[str, float]] = []  # seconds per stage of the rows being computed (innermost last)

    @contextmanager
    def stage(self, name: str):
        """Adds the time spent in the block to stage ``name`` of the row being computed."""
        t0 = time.time()
        try:
            yield
        finally:
            if self._stages:
                self._stages[-1][name] = self._stages[-1].get(name, 0.0) + time.time() - t0

    # -- recipes and data ---------------------------------------------------------------------------------------------
    def recipe(self, row_id: str) -> dict:
        if row_id not in self.recipes:
            raise ConfigError(f"unknown row {row_id!r}; rows: {', '.join(self.recipes)}")
        return resolve_recipe(self.recipes[row_id], self.profile, self.profile_name, self.overrides)

    def dataset_root(self, name: str) -> Path:
        """The user's folder for ``name`` if given, else the synthetic dataset (generated on first use)."""
        if name in self.data_roots:
            return Path(self.data_roots[name])
        spec = self.profile.get("datasets", {}).get(name)
        if spec is None:
            raise ConfigError(f"dataset {name!r} has no synthetic spec in profile {self.profile_name!r}; "
                              f"pass --data-root {name}=PATH")
        root = self.out / "data" / f"{name}-{config_hash(spec)}"
        with self.stage("data"):
            return synthesize(name, root, spec, self.progress)

    def task(self, r: dict):
        from ..tasks import get_task

        return get_task(r["task"], data_root=self.dataset_root(r["dataset"]), image_size=r["image_size"],
                        batch_size=r.get("train", {}).get("batch_size", 64),
                        num_workers=r.get("train", {}).get("num_workers"))

    def root_row(self, row_id: str) -> str:
        """The FP32 row at the start of ``row_id``'s chain of bases."""
        while self.recipes[row_id].get("base"):
            row_id = self.recipes[row_id]["base"]
        return row_id

    # -- rows ---------------------------------------------------------------------------------------------------------
    def run_row(self, row_id: str, force: bool = False) -> dict:
        """Run one row (and the rows it builds on), reusing a finished result when unchanged."""
        if row_id in self._results:
            return self._results[row_id]
        r = self.recipe(row_id)
        base = r.get("base")
        base_res = self.run_row(base, force=base in self._forced) if base else None
        key = self._row_key(r, base_res["recipe_hash"] if base_res else None)
        row_file = self.out / "rows" / f"{row_id}.json"
        if not force and row_file.is_file() and (old := read_json(row_file)).get("recipe_hash") == key:
            self._results[row_id] = old
            return old
        t0 = time.time()
        reset_peak_rss()
        self._stages.append({})
        try:
            res = self._compute_row(r)
        finally:
            stages = self._stages.pop()
        res |= {"recipe_hash": key, "seconds": round(time.time() - t0, 1),
                "stage_seconds": {k: round(v, 1) for k, v in stages.items()}, "peak_rss_mb": peak_rss_mb()}
        write_json(row_file, res)
        self._results[row_id] = res
        print(f"[{row_id}] {res['metric']['name']} {res['metric']['value']:.2f} size {res['size_mb']:.2f} MB "
              f"latency T1 {res['latency_ms'].get('1')} ms ({res['seconds']} s)", flush=True)
        return res

    def _row_key(self, r: dict, base_hash: str | None) -> str:
        weights = {"weights": self.weights_identity(r["id"])} if r["id"] in self.weights else {}
        return config_hash({"recipe": r, "resolved": resolved_configs(r, self.recipes[r["id"]]["_file"]),
                            "base": base_hash, "data": self.data_roots.get(r["dataset"]), **weights})

    def _resolved_configs(self, r: dict) -> dict:
        return resolved_configs(r, self.recipes.get(r["id"], {}).get("_file"))

    def finished_row(self, row_id: str) -> dict | None:
        """The stored result of ``row_id`` if it is up to date with its recipe and its bases, else None."""
        if row_id in self._results:
            return self._results[row_id]
        r = self.recipe(row_id)
        base = self.finished_row(r["base"]) if r.get("base") else None
        row_file = self.out / "rows" / f"{row_id}.json"
        if (r.get("base") and base is None) or not row_file.is_file():
            return None
        old = read_json(row_file)
        return old if old.get("recipe_hash") == self._row_key(r, base["recipe_hash"] if base else None) else None

    def _compute_row(self, r: dict) -> dict:
        from ..bench import count_flops_params, file_size_mb
        from ..runtime import OnnxPredictor

        made = STRATEGIES[r["strategy"]].produce(self, r, self.out / "rows" / r["id"])
        task, path = made.task, made.path
        print(f"[{r['id']}] evaluating {path.name} in ONNX Runtime", flush=True)
        with self.stage("evaluate"):
            metrics = task.evaluate(OnnxPredictor(path, threads=2), progress=self.progress)
        value = metrics[task.metric]
        root = self.root_row(r["id"])
        delta = round(value - self.run_row(root)["metric"]["value"], 3) if root != r["id"] else 0.0
        pruning = self._pruning_of(r["id"])
        bench_size = r.get("bench_size", r["image_size"])
        flops, params = count_flops_params(made.model, torch.randn(1, 3, bench_size, bench_size))
        print(f"[{r['id']}] benchmarking at {bench_size}x{bench_size}", flush=True)
        with self.stage("benchmark"):
            lat, extra = benchmark_file(path, bench_size, self.profile.get("bench", {}))
        if r["strategy"] in ("quant", "qat"):
            from ..quant.check import integer_layers

            ops = integer_layers(path)  # which layers ONNX Runtime runs as integer ops (the speed-up is in ZOO.md)
            extra["int8_ops"] = {"integer": ops.integer, "total": ops.total, "float_layers": ops.float_layers}
        control = self._control_of(r["id"])
        if control:
            extra["control"] = {**control, "delta": round(value - control["value"], 3)}
        return {"id": r["id"], "task": r["task"], "model": r["model"], "dataset": r["dataset"],
                "strategy": r["strategy"], "base": r.get("base"),
                "metric": {"name": task.metric, "value": round(value, 3), "delta": delta},
                "metrics": metrics, "size_mb": round(file_size_mb(path), 3),
                "latency_ms": {k: v["median"] for k, v in lat.items()},
                "latency_p90_ms": {k: v["p90"] for k, v in lat.items()},
                "latency_runs": {k: v["runs"] for k, v in lat.items()},
                "flops": flops, "params": params, "input_size": [bench_size, bench_size],
                "eval_size": list(task.example_inputs().shape[-2:]), "width_mult": r.get("width_mult", 1.0),
                "file": str(path), "profile": self.profile_name, "label": row_label(r["strategy"], pruning),
                "pruning": pruning, **made.extra, **extra}

    def _control_of(self, row_id: str) -> dict | None:
        """The FP32 control of the training done between the row's FP32 root and the row (its own, or its prune
        base's fine-tuning for an INT8 row of a pruned model); None where nothing trains after the root."""
        if not self.profile.get("controls", True):
            return None
        while row_id != self.root_row(row_id):
            r = self.recipe(row_id)
            schedule = STRATEGIES[r["strategy"]].extra_training(r)
            if schedule:
                return self.control(self.root_row(row_id), *schedule)
            row_id = r["base"]
        return None

    def _pruning_of(self, row_id: str) -> dict | None:
        """The pruning summary of a prune row, or of the prune row a quantized row starts from."""
        for rid in (row_id, self.recipes[row_id].get("base")):
            if rid and self.recipes[rid]["strategy"] == "prune":
                cfg = read_json(self.out / "models" / rid / "config.json")
                return {"row": rid, **cfg["prune_info"]}
        return None

    def run(self, rows: list[str] | None = None, force: bool = False) -> list[dict]:
        """Run ``rows`` (default: all), then write ``results.json``, ``ZOO.md`` and ``report.html`` from every
        finished row."""
        from ..report import render_report

        t0 = time.time()
        self._forced = set(rows or self.recipes) if force else set()  # also when reached as another row's base
        for row_id in rows or list(self.recipes):
            self.run_row(row_id, force=row_id in self._forced)
        results = [res for i in self.recipes if (res := self.finished_row(i)) is not None]  # rows of earlier runs too
        first = {}
        for r in results:
            first.setdefault((r["task"], r["model"], r["dataset"]), len(first))
        results.sort(key=lambda r: (first[(r["task"], r["model"], r["dataset"])], *table_order(r)))
        meta = {"profile": self.profile_name, "machine": machine_info(), "wall_seconds": round(time.time() - t0, 1)}
        write_json(self.out / "results.json", {"version": RESULTS_VERSION, "meta": meta, "rows": results})
        reference = load_reference(self.recipes_dir)
        write_text(self.out / "ZOO.md", render_zoo_md(results, meta, reference))
        render_report({"meta": meta, "rows": results}, self.out / "report.html", self.out, reference)
        return results
