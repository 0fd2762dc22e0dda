"""The zoo: one YAML recipe per row, run into ``results.json`` and ``ZOO.md``, resumably.

Each finished row is written to ``OUT/rows/<id>.json`` (atomically) together with a hash
of its resolved recipe; a rerun reuses every row whose recipe has not changed. FP32
baselines are trained once into ``OUT/models/<id>/`` and resume per epoch if interrupted.
"""
from __future__ import annotations

import copy
import hashlib
import json
import platform
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError
from .storage import read_json, write_json, write_text

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
STRATEGIES = ("none", "quant", "qat", "prune")
ROW_KEYS = {"id", "task", "model", "dataset", "strategy", "base", "train", "quant", "qat", "prune", "finetune",
            "image_size", "bench_size", "num_classes", "description", "backbone_from", "analyze_layers"}
ROW_TYPES = {"base": (str,), "train": (dict,), "quant": (dict,), "qat": (dict,), "prune": (dict,),
             "finetune": (dict,), "image_size": (int,), "bench_size": (int,), "num_classes": (int,),
             "description": (str,), "backbone_from": (str,), "analyze_layers": (bool, int), "profiles": (dict,)}
ROW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a row id names files under OUT: no separators, no '..'
SECTIONS = {"train": "TrainConfig", "finetune": "TrainConfig", "quant": "PTQConfig", "qat": "QATConfig",
            "prune": "PruneConfig"}
METRIC_LABEL = {"top1": "Top-1 (%)", "bbox_map": "Box mAP (%)", "voc_map": "VOC mAP@0.5 (%)", "miou": "mIoU (%)"}
STRATEGY_LABEL = {"none": "none", "quant": "quant (PTQ)", "qat": "quant (QAT)"}


def _deep_merge(a: dict, b: dict) -> dict:
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _safe_yaml(path: Path) -> dict:
    from .config import safe_yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read ({e})") from None
    data = safe_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_recipes(recipes_dir: str | Path = RECIPES_DIR) -> dict[str, dict]:
    """All row recipes (``*.yaml`` except ``profiles.yaml``), checked for unknown keys and wrong types."""
    recipes = {}
    for p in sorted(Path(recipes_dir).glob("*.yaml")):
        if p.name in ("profiles.yaml", "reference.yaml"):
            continue
        r = _safe_yaml(p)
        unknown = set(r) - ROW_KEYS - {"profiles"}
        if unknown:
            raise ConfigError(f"{p}: unknown key(s) {sorted(unknown)}; known: {sorted(ROW_KEYS | {'profiles'})}")
        for key in ("id", "task", "model", "dataset", "strategy"):
            if not isinstance(r.get(key), str):
                raise ConfigError(f"{p}: key {key!r} must be a string")
        for key, value in r.items():
            kind = ROW_TYPES.get(key)
            if kind and not (isinstance(value, kind) and not (isinstance(value, bool) and bool not in kind)):
                names = " or ".join(k.__name__ for k in kind)
                raise ConfigError(f"{p}: key {key!r} must be a {names}, got {value!r}")
        if r["task"] not in ("classification", "detection", "segmentation"):
            raise ConfigError(f"{p}: task {r['task']!r} not one of classification, detection, segmentation")
        if r["strategy"] not in STRATEGIES:
            raise ConfigError(f"{p}: strategy {r['strategy']!r} not one of {STRATEGIES}")
        if r["strategy"] != "none" and not isinstance(r.get("base"), str):
            raise ConfigError(f"{p}: a compressed row needs 'base: <id of the row it compresses>'")
        _check_id(r["id"], str(p))
        if r["id"] in recipes:
            raise ConfigError(f"{p}: duplicate row id {r['id']!r}")
        r["_file"] = str(p)
        recipes[r["id"]] = r
    for r in recipes.values():
        if r.get("base") and r["base"] not in recipes:
            raise ConfigError(f"{r['_file']}: base row {r['base']!r} not found")
        if r.get("base") and recipes[r["base"]]["strategy"] not in ("none", "prune"):
            raise ConfigError(f"{r['_file']}: base row {r['base']!r} has no PyTorch model to compress "
                              "(a base must be an FP32 'none' row or a 'prune' row)")
        if r["strategy"] == "prune" and recipes[r["base"]]["strategy"] != "none":
            raise ConfigError(f"{r['_file']}: a prune row's base must be an FP32 'none' row")
    return recipes


def _check_id(row_id, where: str) -> None:
    if not isinstance(row_id, str) or not ROW_ID.fullmatch(row_id) or ".." in row_id:
        raise ConfigError(f"{where}: row id {row_id!r} must be letters, digits, '.', '_' or '-' (it names files "
                          "under the output folder: no path separators, no '..')")


def _section_config(section: str):
    from .prune import PruneConfig
    from .quant import PTQConfig
    from .quant.qat import QATConfig
    from .training import TrainConfig

    return {"TrainConfig": TrainConfig, "PTQConfig": PTQConfig, "QATConfig": QATConfig,
            "PruneConfig": PruneConfig}[SECTIONS[section]]


def check_overrides(overrides: dict, where: str = "--set") -> None:
    """Refuse settings that no row would read: unknown top-level keys, unknown keys or bad values of a section
    (checked by the section's config class), and an attempt to change row ids, tasks or chains."""
    unknown = set(overrides) - (ROW_KEYS - {"id", "task", "strategy", "base"})
    if unknown:
        raise ConfigError(f"{where}: unknown or fixed recipe key(s) {sorted(unknown)}; settable: "
                          f"{sorted(ROW_KEYS - {'id', 'task', 'strategy', 'base'})}")
    for key, value in overrides.items():
        kind = ROW_TYPES.get(key)
        if kind and not isinstance(value, kind):
            raise ConfigError(f"{where}: {key} must be a {' or '.join(k.__name__ for k in kind)}, got {value!r}")
        if key in SECTIONS:
            _section_config(key).from_dict(value)  # raises a ConfigError naming unknown keys or bad values


def load_profile(name: str, recipes_dir: str | Path = RECIPES_DIR) -> dict:
    """A named profile from ``profiles.yaml`` (overrides merged into every recipe)."""
    profiles = _safe_yaml(Path(recipes_dir) / "profiles.yaml")
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r}; known: {sorted(profiles)}")
    return profiles[name]


def resolve_recipe(recipe: dict, profile: dict, profile_name: str) -> dict:
    """The recipe, overridden by the profile's row settings, then by the recipe's own per-profile overrides."""
    r = {k: v for k, v in recipe.items() if k not in ("profiles", "_file")}
    r = _deep_merge(r, profile.get("rows", {}))
    r = _deep_merge(r, recipe.get("profiles", {}).get(profile_name, {}))
    scale = profile.get("epochs_scale")
    if scale and "train" in r and "epochs" in r["train"]:
        r["train"]["epochs"] = max(1, round(r["train"]["epochs"] * scale))
    return r


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def machine_info() -> dict:
    """CPU model, core count and library versions, for the record."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import onnxruntime
    import torchvision

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "onnxruntime": onnxruntime.__version__,
            "date": time.strftime("%Y-%m-%d")}


@dataclass
class Zoo:
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
    def _stage(self, name: str):
        """Adds the time spent in the block to stage ``name`` of the row being computed."""
        t0 = time.time()
        try:
            yield
        finally:
            if self._stages:
                self._stages[-1][name] = self._stages[-1].get(name, 0.0) + time.time() - t0

    # -- pieces -----------------------------------------------------------------------------------
    def recipe(self, row_id: str) -> dict:
        if row_id not in self.recipes:
            raise ConfigError(f"unknown row {row_id!r}; rows: {', '.join(self.recipes)}")
        r = resolve_recipe(self.recipes[row_id], self.profile, self.profile_name)
        r = _deep_merge(r, self.overrides) if self.overrides else r
        if r.get("id") != row_id:
            raise ConfigError(f"{self.recipes[row_id]['_file']}: a profile or override changes the row id to "
                              f"{r.get('id')!r}; ids are fixed by the recipe")
        return r

    def dataset_root(self, name: str) -> Path:
        """The user's folder for ``name`` if given, else the synthetic dataset (generated on first use)."""
        if name in self.data_roots:
            return Path(self.data_roots[name])
        spec = self.profile.get("datasets", {}).get(name)
        if spec is None:
            raise ConfigError(f"dataset {name!r} has no synthetic spec in profile {self.profile_name!r}; "
                              f"pass --data-root {name}=PATH")
        root = self.out / "data" / f"{name}-{_hash(spec)}"
        with self._stage("data"):
            return self._synthesize(name, root, spec)

    def _synthesize(self, name: str, root: Path, spec: dict) -> Path:
        if name.startswith("synth-cls"):
            from .data.synth_cls import write_synth_cls

            write_synth_cls(root, progress=self.progress, **spec)
        elif name.startswith("synth-det"):
            from .data.synth_det import write_synth_det

            write_synth_det(root, progress=self.progress, **spec)
        elif name.startswith("synth-seg"):
            from .data.synth_seg import write_synth_seg

            write_synth_seg(root, progress=self.progress, **spec)
        else:
            raise ConfigError(f"no generator for dataset {name!r}")
        return root

    def task(self, r: dict):
        from .tasks import get_task

        return get_task(r["task"], data_root=self.dataset_root(r["dataset"]), image_size=r["image_size"],
                        batch_size=r.get("train", {}).get("batch_size", 64),
                        num_workers=r.get("train", {}).get("num_workers"))

    def baseline(self, row_id: str):
        """The trained FP32 model of a ``none`` row (trained now if needed) and its task."""
        from .checkpoint import load_checkpoint, save_checkpoint
        from .models import create_model
        from .training import TrainConfig, fit

        r = self.recipe(row_id)
        task = self.task(r)
        ckpt = self.out / "models" / row_id
        key = _hash({k: r.get(k) for k in ("model", "dataset", "train", "image_size", "width_mult")}
                    | ({"backbone_from": r["backbone_from"]} if r.get("backbone_from") else {})
                    | {"data": str(task.data_root)})
        if row_id in self.weights:  # the user's own trained FP32 model: nothing to train
            from .storage import load_weights

            src = Path(self.weights[row_id])
            if r["strategy"] != "none":
                raise ConfigError(f"--weights {row_id}=...: only FP32 ('none') rows take weights")
            model = create_model(r["model"], num_classes=task.num_classes, width_mult=r.get("width_mult", 1.0))
            load_weights(model, src / "model.safetensors" if src.is_dir() else src)
            print(f"[{row_id}] using your weights {src}", flush=True)
            return model.eval(), task
        cfg_file = ckpt / "config.json"
        if cfg_file.is_file() and read_json(cfg_file).get("key") == key:
            return load_checkpoint(ckpt)[0], task
        tcfg = TrainConfig.from_dict(r.get("train"))
        torch.manual_seed(tcfg.seed)
        model = create_model(r["model"], num_classes=task.num_classes, width_mult=r.get("width_mult", 1.0))
        if r.get("backbone_from"):  # e.g. a detector's backbone from the zoo's trained classifier
            from .models import load_backbone

            cls_model, _ = self.baseline(r["backbone_from"])
            n = load_backbone(model, cls_model.state_dict())
            print(f"[{row_id}] backbone initialised from {r['backbone_from']} ({n} tensors)", flush=True)
        state = ckpt / f"train_state-{key}.pt"
        print(f"[{row_id}] training {r['model']} on {r['dataset']} for {tcfg.epochs} epochs", flush=True)
        with self._stage("train"):
            model = fit(model, task.train_loader(tcfg.batch_size), task.loss_fn, tcfg, state_path=state,
                        progress=self.progress)
        save_checkpoint(model, ckpt, {"model": r["model"], "num_classes": task.num_classes,
                                      "width_mult": r.get("width_mult", 1.0), "image_size": r["image_size"],
                                      "classes": task.classes, "train": tcfg.to_dict(), "key": key})
        state.unlink(missing_ok=True)
        return model.eval(), task

    def model_of(self, row_id: str):
        """The PyTorch model a row produces (FP32 baseline or pruned + fine-tuned) and its task."""
        strategy = self.recipes[row_id]["strategy"]
        if strategy == "none":
            return self.baseline(row_id)
        if strategy == "prune":
            return self.pruned(row_id)
        raise ConfigError(f"row {row_id!r} ({strategy}) produces an ONNX file, not a PyTorch model")

    def root_row(self, row_id: str) -> str:
        """The FP32 row at the start of ``row_id``'s chain of bases."""
        while self.recipes[row_id].get("base"):
            row_id = self.recipes[row_id]["base"]
        return row_id

    def pruned(self, row_id: str):
        """The pruned and fine-tuned model of a ``prune`` row (computed now if needed; resumable) and its task."""
        from .checkpoint import load_checkpoint
        from .prune import PruneConfig
        from .prune.finetune import prune_and_finetune
        from .training import TrainConfig

        r = self.recipe(row_id)
        base_model, task = self.model_of(r["base"])
        pcfg = PruneConfig.from_dict(r.get("prune"))
        tcfg = TrainConfig.from_dict(r.get("finetune"))
        base_key = read_json(self.out / "models" / r["base"] / "config.json")["key"]
        key = _hash({"prune": pcfg.to_dict(), "finetune": tcfg.to_dict(), "base": base_key,
                     "image_size": r["image_size"]})
        ckpt = self.out / "models" / row_id
        cfg_file = ckpt / "config.json"
        if cfg_file.is_file() and read_json(cfg_file).get("key") == key:
            return load_checkpoint(ckpt)[0], task
        sens_path = (self.out / "models" / r["base"] /
                     f"sensitivity-{_hash(pcfg.sensitivity.to_dict() | {'size': r['image_size']})}.json")
        print(f"[{row_id}] pruning {r['model']}: -{pcfg.flops_reduction:.0%} FLOPs, {pcfg.method} ratios", flush=True)
        with self._stage("prune"):
            model, _ = prune_and_finetune(
                base_model, task, pcfg, tcfg, ckpt, sensitivity_path=sens_path,
                state_name=f"finetune_state-{key}.pt", progress=self.progress, log_prefix=f"[{row_id}] ",
                config={"model": r["model"], "num_classes": task.num_classes, "width_mult": r.get("width_mult", 1.0),
                        "image_size": r["image_size"], "classes": task.classes, "key": key})
        return model.eval(), task

    # -- rows -------------------------------------------------------------------------------------
    def run_row(self, row_id: str, force: bool = False) -> dict:
        """Run one row (and the FP32 row it compresses), reusing a finished result when unchanged."""
        if row_id in self._results:
            return self._results[row_id]
        r = self.recipe(row_id)
        base = r.get("base")
        base_res = self.run_row(base, force=base in self._forced) if base else None
        key = self._row_key(r, base_res["recipe_hash"] if base_res else None)
        row_file = self.out / "rows" / f"{row_id}.json"
        if not force and row_file.is_file():
            old = read_json(row_file)
            if old.get("recipe_hash") == key:
                self._results[row_id] = old
                return old
        t0 = time.time()
        _reset_peak_rss()
        self._stages.append({})
        try:
            res = self._compute_row(r)
        finally:
            stages = self._stages.pop()
        res["recipe_hash"] = key
        res["seconds"] = round(time.time() - t0, 1)
        res["stage_seconds"] = {k: round(v, 1) for k, v in stages.items()}
        res["peak_rss_mb"] = _peak_rss_mb()
        write_json(row_file, res)
        self._results[row_id] = res
        print(f"[{row_id}] {res['metric']['name']} {res['metric']['value']:.2f} size {res['size_mb']:.2f} MB "
              f"latency T1 {res['latency_ms'].get('1')} ms ({res['seconds']} s)", flush=True)
        return res

    def _row_key(self, r: dict, base_hash: str | None) -> str:
        return _hash({"recipe": r, "resolved": self._resolved_configs(r), "base": base_hash,
                      "data": self.data_roots.get(r["dataset"]), **self._weights_key(r)})

    def _weights_key(self, r: dict) -> dict:
        """Identifies the user's weights file (path, size, mtime), so replacing it reruns the row."""
        src = self.weights.get(r["id"])
        if not src:
            return {}
        p = Path(src) / "model.safetensors" if Path(src).is_dir() else Path(src)
        if not p.is_file():
            raise ConfigError(f"{p}: weights file not found (from --weights {r['id']}=...)")
        st = p.stat()
        return {"weights": [str(p.resolve()), st.st_size, int(st.st_mtime)]}

    def finished_row(self, row_id: str) -> dict | None:
        """The stored result of ``row_id`` if it is up to date with its recipe and its bases, else None."""
        if row_id in self._results:
            return self._results[row_id]
        r = self.recipe(row_id)
        base = self.finished_row(r["base"]) if r.get("base") else None
        if r.get("base") and base is None:
            return None
        row_file = self.out / "rows" / f"{row_id}.json"
        if not row_file.is_file():
            return None
        old = read_json(row_file)
        return old if old.get("recipe_hash") == self._row_key(r, base["recipe_hash"] if base else None) else None

    def _resolved_configs(self, r: dict) -> dict:
        """Configs with the library's defaults filled in, so a changed default reruns the rows it affects."""
        try:
            return Zoo._resolve(r)
        except ConfigError as e:
            raise ConfigError(f"{self.recipes.get(r['id'], {}).get('_file', r['id'])}: {e}") from None

    @staticmethod
    def _resolve(r: dict) -> dict:
        if r["strategy"] == "quant":
            from .quant import PTQConfig

            return PTQConfig.from_dict(r.get("quant")).to_dict()
        if r["strategy"] == "qat":
            from .quant.qat import QATConfig

            return QATConfig.from_dict(r.get("qat")).to_dict()
        if r["strategy"] == "prune":
            from .prune import PruneConfig
            from .training import TrainConfig

            return {"prune": PruneConfig.from_dict(r.get("prune")).to_dict(),
                    "finetune": TrainConfig.from_dict(r.get("finetune")).to_dict()}
        from .training import TrainConfig

        return TrainConfig.from_dict(r.get("train")).to_dict()

    def _compute_row(self, r: dict) -> dict:
        from .bench import count_flops_params, file_size_mb
        from .export import export_onnx
        from .runtime import OnnxPredictor

        row_dir = self.out / "rows" / r["id"]
        own_model = r["strategy"] in ("none", "prune")
        model, task = self.model_of(r["id"] if own_model else r["base"])
        bench_size = r.get("bench_size", r["image_size"])
        example = task.example_inputs()
        if own_model:
            with self._stage("export"):
                path = export_onnx(model, row_dir / "model_fp32.onnx", example)
        elif r["strategy"] == "qat":
            from .quant.qat import QATConfig, quantize_aware_train

            qcfg = QATConfig.from_dict(r.get("qat"))
            print(f"[{r['id']}] quantization-aware training, {qcfg.epochs} epoch(s)", flush=True)
            with self._stage("qat"):
                path, _ = quantize_aware_train(
                    model, example, task.train_loader(qcfg.batch_size), task.loss_fn,
                    task.calibration_batches(qcfg.calibration.num_calibration,
                                             qcfg.calibration.calibration_batch_size),
                    row_dir / "model_int8_qat.onnx", qcfg, progress=self.progress)
        else:  # quant
            from .quant import PTQConfig, quantize

            qcfg = PTQConfig.from_dict(r.get("quant"))
            print(f"[{r['id']}] quantizing with {qcfg.num_calibration} calibration images", flush=True)
            with self._stage("quantize"):
                path = quantize(model, example, task.calibration_batches(qcfg.num_calibration,
                                                                          qcfg.calibration_batch_size),
                                row_dir / "model_int8.onnx", qcfg, check=False)  # timed below, at bench size
            if r.get("analyze_layers"):
                with self._stage("layer_analysis"):
                    self._layer_sqnr(r, model, example, task, qcfg, row_dir / "quant_layers.json")
        print(f"[{r['id']}] evaluating {path.name} in ONNX Runtime", flush=True)
        with self._stage("evaluate"):
            metrics = task.evaluate(OnnxPredictor(path, threads=2), progress=self.progress)
        value = metrics[task.metric]
        root = self.root_row(r["id"])
        delta = round(value - self.run_row(root)["metric"]["value"], 3) if root != r["id"] else 0.0
        pruning = self._pruning_of(r["id"])
        flops, params = count_flops_params(model, torch.randn(1, 3, bench_size, bench_size))
        print(f"[{r['id']}] benchmarking at {bench_size}x{bench_size}", flush=True)
        with self._stage("benchmark"):
            lat, extra = self._benchmark(path, bench_size)
        if r["strategy"] in ("quant", "qat"):
            from .quant.check import integer_layers

            ops = integer_layers(path)  # which layers ONNX Runtime runs as integer ops (the speed-up is in ZOO.md)
            extra["int8_ops"] = {"integer": ops.integer, "total": ops.total, "float_layers": ops.float_layers}
        return {"id": r["id"], "task": r["task"], "model": r["model"], "dataset": r["dataset"],
                "strategy": r["strategy"], "base": r.get("base"),
                "metric": {"name": task.metric, "value": round(value, 3), "delta": delta},
                "metrics": metrics, "size_mb": round(file_size_mb(path), 3),
                "latency_ms": {k: v["median"] for k, v in lat.items()},
                "latency_p90_ms": {k: v["p90"] for k, v in lat.items()},
                "latency_runs": {k: v["runs"] for k, v in lat.items()},
                "flops": flops, "params": params, "input_size": [bench_size, bench_size],
                "eval_size": list(example.shape[-2:]), "width_mult": r.get("width_mult", 1.0),
                "file": str(path), "profile": self.profile_name, "label": _label(r["strategy"], pruning),
                "pruning": pruning, **extra}

    def _benchmark(self, path: Path, bench_size: int) -> tuple[dict, dict]:
        """ONNX Runtime latency per thread count, and OpenVINO's where installed."""
        from .bench import benchmark_latency
        from .runtime import available_runtimes

        bench = self.profile.get("bench", {})
        timing = {"warmup": bench.get("warmup", 5), "runs": bench.get("runs", 30),
                  "min_runs": bench.get("min_runs", 10), "max_seconds": bench.get("max_seconds")}
        shape = (1, 3, bench_size, bench_size)
        lat = benchmark_latency(path, shape, threads=tuple(bench.get("threads", (1, 2, 4))), **timing)
        extra = {}
        if "openvino" in bench.get("runtimes", ["onnxruntime", "openvino"]) and "openvino" in available_runtimes():
            ov = benchmark_latency(path, shape, threads=tuple(bench.get("openvino_threads", (1, 2))),
                                   runtime="openvino", **timing)
            extra["latency_ms_openvino"] = {k: v["median"] for k, v in ov.items()}
        gpu = [rt for rt in ("onnxruntime-cuda", "onnxruntime-tensorrt") if rt in available_runtimes()]
        if gpu:  # batch 1 on the GPU, input copied in and out in the timed call
            extra["latency_ms_gpu"] = {rt: benchmark_latency(path, shape, threads=(1,), runtime=rt, **timing)["1"]
                                       ["median"] for rt in gpu}
        return lat, extra

    def _layer_sqnr(self, r: dict, model, example, task, qcfg, path: Path) -> None:
        """Per-layer INT8 error (output SQNR with only that layer quantized) on a few calibration images,
        for the report; the metric change per layer is `slimzoo quant --analyze`'s (costlier) job."""
        import tempfile

        from .export import export_onnx, fold_batchnorm
        from .quant.analysis import analyze_layers

        n = int(r["analyze_layers"]) if not isinstance(r["analyze_layers"], bool) else 32
        print(f"[{r['id']}] per-layer INT8 error on {n} images", flush=True)
        with tempfile.TemporaryDirectory() as d:
            fp32 = export_onnx(fold_batchnorm(model), Path(d) / "fp32_folded.onnx", example)
            res = analyze_layers(fp32, list(task.calibration_batches(n, 16)), None, cfg=qcfg, progress=self.progress)
        write_json(path, {"row": r["id"], "model": r["model"], "images": n, **res})

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
        t0 = time.time()
        self._forced = set(rows or self.recipes) if force else set()  # also when reached as another row's base
        for row_id in rows or list(self.recipes):
            self.run_row(row_id, force=row_id in self._forced)
        results = [res for i in self.recipes if (res := self.finished_row(i)) is not None]  # rows of earlier runs too
        first = {}
        for r in results:
            first.setdefault((r["task"], r["model"], r["dataset"]), len(first))
        results.sort(key=lambda r: (first[(r["task"], r["model"], r["dataset"])], *_order(r)))
        meta = {"profile": self.profile_name, "machine": machine_info(), "wall_seconds": round(time.time() - t0, 1)}
        write_json(self.out / "results.json", {"meta": meta, "rows": results})
        reference = load_reference(self.recipes_dir)
        write_text(self.out / "ZOO.md", render_zoo_md(results, meta, reference))
        from .report import render_report

        render_report({"meta": meta, "rows": results}, self.out / "report.html", self.out, reference)
        return results


def _reset_peak_rss() -> None:
    """Reset this process's peak resident memory (Linux: ``clear_refs`` 5), so each row reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float | None:
    """Peak resident memory of this process (MB) since the last reset; data-loader workers not included."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return None


def _label(strategy: str, pruning: dict | None) -> str:
    if not pruning:
        return STRATEGY_LABEL.get(strategy, strategy)
    pct = f"{100 * pruning['target_flops_reduction']:.2f}".rstrip("0").rstrip(".")
    label = f"prune -{pct}%"
    if pruning.get("method") == "uniform":
        label += " (uniform)"
    return label + {"quant": " + quant", "qat": " + QAT"}.get(strategy, "")


def _order(row: dict) -> tuple:
    """Table order within a model: FP32, PTQ, QAT, then pruned rows by FLOPs target, each before its INT8 row."""
    p = row.get("pruning")
    rank = STRATEGIES.index(row["strategy"]) if row["strategy"] in STRATEGIES else 9
    if p:  # the pruned FP32 row, then its INT8 rows
        return (1, p["target_flops_reduction"], -1 if row["strategy"] == "prune" else rank)
    return (0, 0.0, rank)


def _fmt_metric(row: dict, named: bool = False) -> str:
    m = row["metric"]
    name = f"{METRIC_LABEL.get(m['name'], m['name']).removesuffix(' (%)')} " if named else ""
    if row["strategy"] == "none":
        return f"{name}{m['value']:.2f}"
    return f"{name}{m['value']:.2f} ({m['delta'] + 0.0:+.2f})"  # + 0.0: no "-0.00"


def load_reference(recipes_dir: str | Path = RECIPES_DIR) -> dict[str, dict]:
    """The reference's own figures by row id (``reference.yaml``), or {} if there is none."""
    p = Path(recipes_dir) / "reference.yaml"
    return _safe_yaml(p) if p.is_file() else {}


def _root_of(row: dict, by_id: dict[str, dict]) -> dict:
    while row.get("base") and row["base"] in by_id:
        row = by_id[row["base"]]
    return row


def compare(row: dict, by_id: dict[str, dict]) -> dict:
    """Our size ratio and one-thread speed-up against the row's FP32 root row (1.0 for the root itself)."""
    root = _root_of(row, by_id)
    t1, root_t1 = row["latency_ms"].get("1"), root["latency_ms"].get("1")
    return {"size_ratio": row["size_mb"] / root["size_mb"],
            "speedup": root_t1 / t1 if t1 and root_t1 else None}


def _fmt_ref(ref: dict | None) -> tuple[str, str, str]:
    """(metric (delta), size (ratio), T1 speed-up) of a reference row, '-' where it reports nothing."""
    if not ref:
        return "-", "-", "-"
    metric = f"{ref['metric']:.2f}" + (f" ({ref['delta']:+.2f})" if "delta" in ref else "")
    size = f"{ref['size_mb']:g} MB"
    if "base_size_mb" in ref:
        size += f" ({ref['size_mb'] / ref['base_size_mb']:.2f}x)"
    speed = "-"
    if ref.get("latency_ms") and ref.get("base_latency_ms"):
        speed = f"{ref['base_latency_ms'] / ref['latency_ms']:.2f}x"
    elif ref.get("latency_ms"):
        speed = "1.00x"
    return metric, size, speed


def render_zoo_md(rows: list[dict], meta: dict, reference: dict[str, dict] | None = None) -> str:
    """The zoo table in the reference's shape, one section per task, with the reference's figures beside ours."""
    reference = load_reference() if reference is None else reference
    by_id = {r["id"]: r for r in rows}
    mi = meta.get("machine", {})
    lines = ["# slimzoo model zoo", "",
             f"Profile `{meta.get('profile')}`, measured {mi.get('date', '')} on {mi.get('cpu', '?')} "
             f"({mi.get('cores', '?')} cores); ONNX Runtime {mi.get('onnxruntime', '?')} CPU, batch 1. "
             "Metrics come from running each deployable file (FP32 or INT8 ONNX) in ONNX Runtime over the whole "
             "validation set. Latency: median of timed `session.run` calls after warm-up, at 1/2/4 intra-op "
             "threads, at the bench resolution (OpenVINO, where installed: the same file, float layers kept in "
             "float32). FLOPs count multiply-accumulates. Size ratio and T1 speed-up are against the row's FP32 "
             "model.", "",
             "The `Ref.` columns are the reference's own figures (PaddleX compressed model zoo: ImageNet, COCO, "
             "Pascal VOC, Cityscapes; Paddle Lite on ARM phones, one thread, device per row in "
             "`recipes/reference.yaml`), copied, not measured: our data are synthetic, so compare the shape of "
             "the results (the change, the size ratio, the speed-up), not the absolute metric.", ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += [f"## {task.capitalize()}", ""]
        names = list(dict.fromkeys(r["metric"]["name"] for r in rows if r["task"] == task))
        metric = METRIC_LABEL.get(names[0], names[0]) if len(names) == 1 else "Metric (%)"
        has_ov = any("latency_ms_openvino" in r for r in rows if r["task"] == task)
        has_gpu = any("latency_ms_gpu" in r for r in rows if r["task"] == task)
        lines += [f"| Model | Strategy | Dataset | {metric} | Size (MB) | Size ratio | Latency T1 / T2 / T4 (ms) | "
                  "T1 speed-up | " + ("OpenVINO T1 / T2 (ms) | " if has_ov else "")
                  + ("GPU CUDA / TensorRT (ms) | " if has_gpu else "") + "GFLOPs | Params (M) | "
                  "Eval res | Bench res | Ref. metric | Ref. size | Ref. T1 speed-up |",
                  "|---|---|---|---|---|---|---|---|" + ("---|" if has_ov else "") + ("---|" if has_gpu else "")
                  + "---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["task"] == task):
            lat = " / ".join(f"{r['latency_ms'][k]:.2f}" for k in sorted(r["latency_ms"], key=int))
            c = compare(r, by_id)
            speed = f"{c['speedup']:.2f}x" if c["speedup"] else "-"
            ref_metric, ref_size, ref_speed = _fmt_ref(reference.get(r["id"]))
            label = r.get("label") or STRATEGY_LABEL.get(r["strategy"], r["strategy"])
            ov = ""
            if has_ov:
                o = r.get("latency_ms_openvino")
                ov = (" / ".join(f"{o[k]:.2f}" for k in sorted(o, key=int)) if o else "-") + " | "
            if has_gpu:
                g = r.get("latency_ms_gpu", {})
                ov += " / ".join(f"{g[k]:.2f}" if k in g else "-"
                                 for k in ("onnxruntime-cuda", "onnxruntime-tensorrt")) + " | "
            lines.append(f"| {r['model']} | {label} | {r['dataset']} | {_fmt_metric(r, len(names) > 1)} | "
                         f"{r['size_mb']:.2f} | {c['size_ratio']:.2f}x | {lat} | {speed} | {ov}"
                         f"{r['flops'] / 1e9:.3f} | "
                         f"{r['params'] / 1e6:.2f} | {r['eval_size'][0]}x{r['eval_size'][1]} | "
                         f"{r['input_size'][0]}x{r['input_size'][1]} | {ref_metric} | {ref_size} | {ref_speed} |")
        lines.append("")
    lines.append(f"Wall time of this run: {meta.get('wall_seconds', 0):.0f} s (rows reused from earlier runs "
                 "count their own time in results.json).")
    lines += _time_table(rows)
    return "\n".join(lines) + "\n"


STAGES = ("data", "train", "prune", "qat", "quantize", "layer_analysis", "export", "evaluate", "benchmark")


def _time_table(rows: list[dict]) -> list[str]:
    """Seconds per task and stage, summed over the rows' own computation (``stage_seconds``)."""
    timed = [r for r in rows if r.get("stage_seconds")]
    if not timed:
        return []
    stages = [s for s in STAGES if any(s in r["stage_seconds"] for r in timed)]
    lines = ["", "### Where the time went (seconds, as each row was computed)", "",
             "| Task | Rows | " + " | ".join(s.replace("_", " ") for s in stages) + " | Row total |",
             "|---|---|" + "---|" * len(stages) + "---|"]
    total = {s: 0.0 for s in stages}
    for task in dict.fromkeys(r["task"] for r in timed):
        mine = [r for r in timed if r["task"] == task]
        per = {s: sum(r["stage_seconds"].get(s, 0.0) for r in mine) for s in stages}
        for s in stages:
            total[s] += per[s]
        lines.append(f"| {task} | {len(mine)} | " + " | ".join(f"{per[s]:.0f}" for s in stages)
                     + f" | {sum(r['seconds'] for r in mine):.0f} |")
    lines.append(f"| all | {len(timed)} | " + " | ".join(f"{total[s]:.0f}" for s in stages)
                 + f" | {sum(r['seconds'] for r in timed):.0f} |")
    return lines
