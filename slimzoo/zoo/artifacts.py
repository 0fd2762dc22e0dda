"""The zoo's stored PyTorch models: FP32 baselines, pruned + fine-tuned models and the FP32 controls, each under
``OUT/models/<row>/`` and keyed by one hash of the resolved configs that produce it (:meth:`ModelStore.model_key`),
so a changed recipe, dataset or base retrains exactly what it affects, and an interrupted training resumes."""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..errors import ConfigError
from ..storage import read_json, write_json
from .recipes import config_hash


class ModelStore:
    """Mixed into the runner, which provides ``out``, ``weights``, ``recipe()``, ``task()``, ``dataset_root()``,
    ``stage()`` and ``progress``."""

    def model_key(self, row_id: str) -> str:
        """The hash of everything that determines the model of an FP32 or prune row (its base's key included)."""
        r = self.recipe(row_id)
        if r["strategy"] == "prune":
            from ..prune import PruneConfig
            from ..training import TrainConfig

            return config_hash({"prune": PruneConfig.from_dict(r.get("prune")).to_dict(),
                                "finetune": TrainConfig.from_dict(r.get("finetune")).to_dict(),
                                "base": self.model_key(r["base"]), "image_size": r["image_size"]})
        if row_id in self.weights:  # the user's own weights: identified by the file itself
            return config_hash({"weights": self.weights_identity(row_id), "model": r["model"],
                                "width_mult": r.get("width_mult", 1.0)})
        return config_hash({k: r.get(k) for k in ("model", "dataset", "train", "image_size", "width_mult")}
                           | {k: r[k] for k in ("backbone_from", "anchors") if r.get(k)}
                           | {"data": str(self.dataset_root(r["dataset"]))})

    def weights_identity(self, row_id: str) -> list:
        """(path, size, mtime) of the user's weights for ``row_id``, so replacing the file reruns what uses it."""
        src = Path(self.weights[row_id])
        p = src / "model.safetensors" if src.is_dir() else src
        if not p.is_file():
            raise ConfigError(f"{p}: weights file not found (from --weights {row_id}=...)")
        st = p.stat()
        return [str(p.resolve()), st.st_size, int(st.st_mtime)]

    def model_kwargs(self, row_id: str, task) -> dict:
        """The model factory's arguments beyond classes and width, from the row's FP32 root: a detector's ``anchors``
        ("kmeans": fitted to the training boxes at the row's resolution, deterministic; "coco": YOLOv3's own; or a
        list of nine (w, h) pixel pairs at the row's resolution)."""
        r = self.recipe(self.root_row(row_id))
        anchors = r.get("anchors")
        if anchors in (None, "coco"):
            return {}
        if anchors == "kmeans":
            from ..tasks.detection import fit_dataset_anchors

            anchors = fit_dataset_anchors(task)
        elif not (isinstance(anchors, list) and len(anchors) == 9 and all(
                isinstance(a, list) and len(a) == 2 and all(isinstance(v, (int, float)) and v > 0 for v in a)
                for a in anchors)):
            raise ConfigError(f"{r.get('_file', r['id'])}: anchors must be 'coco', 'kmeans' or nine [w, h] pairs "
                              f"of positive pixel sizes at image_size {r['image_size']}, got {anchors!r}")
        return {"anchors": anchors, "anchor_size": r["image_size"]}

    def _stored(self, row_id: str, key: str):
        from ..checkpoint import load_checkpoint

        cfg_file = self.out / "models" / row_id / "config.json"
        if cfg_file.is_file() and read_json(cfg_file).get("key") == key:
            return load_checkpoint(cfg_file.parent)[0]
        return None

    def baseline(self, row_id: str):
        """The trained FP32 model of a ``none`` row (trained now if needed) and its task."""
        from ..checkpoint import save_checkpoint
        from ..models import create_model
        from ..training import TrainConfig, fit

        r = self.recipe(row_id)
        task = self.task(r)
        if row_id in self.weights:  # the user's own trained FP32 model: nothing to train
            from ..storage import load_weights

            src = Path(self.weights[row_id])
            model = create_model(r["model"], num_classes=task.num_classes, width_mult=r.get("width_mult", 1.0),
                                 **self.model_kwargs(row_id, task))
            load_weights(model, src / "model.safetensors" if src.is_dir() else src)
            print(f"[{row_id}] using your weights {src}", flush=True)
            return model.eval(), task
        key = self.model_key(row_id)
        if (stored := self._stored(row_id, key)) is not None:
            return stored, task
        tcfg = TrainConfig.from_dict(r.get("train"))
        torch.manual_seed(tcfg.seed)
        kwargs = self.model_kwargs(row_id, task)
        model = create_model(r["model"], num_classes=task.num_classes, width_mult=r.get("width_mult", 1.0), **kwargs)
        if kwargs.get("anchors"):
            print(f"[{row_id}] anchors (w, h at {r['image_size']}px): {kwargs['anchors']}", flush=True)
        if r.get("backbone_from"):  # e.g. a detector's backbone from the zoo's trained classifier
            from ..models import load_backbone

            n = load_backbone(model, self.baseline(r["backbone_from"])[0].state_dict())
            print(f"[{row_id}] backbone initialised from {r['backbone_from']} ({n} tensors)", flush=True)
        ckpt = self.out / "models" / row_id
        state = ckpt / f"train_state-{key}.pt"
        curve_file = ckpt / f"curve-{key}.json"
        curve = read_json(curve_file) if curve_file.is_file() and state.is_file() else []  # kept when resuming

        def on_epoch_end(epoch: int, m) -> None:  # the validation curve: has the baseline flattened?
            with self.stage("curve"):
                curve[:] = [c for c in curve if c["epoch"] <= epoch] + [curve_point(epoch, m, task)]
            write_json(curve_file, curve)
            print(f"[{row_id}] epoch {epoch + 1}: {task.metric} {curve[-1]['value']:.2f}", flush=True)

        print(f"[{row_id}] training {r['model']} on {r['dataset']} for {tcfg.epochs} epochs", flush=True)
        with self.stage("train"):
            model = fit(model, task.train_loader(tcfg.batch_size), task.loss_fn, tcfg, state_path=state,
                        progress=self.progress, on_epoch_end=on_epoch_end)
        save_checkpoint(model, ckpt, {"model": r["model"], "num_classes": task.num_classes,
                                      "width_mult": r.get("width_mult", 1.0), "model_kwargs": kwargs,
                                      "image_size": r["image_size"], "classes": task.classes, "train": tcfg.to_dict(),
                                      "key": key, "curve": curve})
        state.unlink(missing_ok=True)
        curve_file.unlink(missing_ok=True)
        return model.eval(), task

    def pruned(self, row_id: str):
        """The pruned and fine-tuned model of a ``prune`` row (computed now if needed; resumable) and its task."""
        from ..prune import PruneConfig
        from ..prune.finetune import prune_and_finetune
        from ..training import TrainConfig

        r = self.recipe(row_id)
        base_model, task = self.model_of(r["base"])
        key = self.model_key(row_id)
        if (stored := self._stored(row_id, key)) is not None:
            return stored, task
        pcfg = PruneConfig.from_dict(r.get("prune"))
        tcfg = TrainConfig.from_dict(r.get("finetune"))
        sens_path = (self.out / "models" / r["base"] /
                     f"sensitivity-{config_hash(pcfg.sensitivity.to_dict() | {'size': r['image_size']})}.json")
        print(f"[{row_id}] pruning {r['model']}: -{pcfg.flops_reduction:.0%} FLOPs, {pcfg.method} ratios", flush=True)
        with self.stage("prune"):
            model, _ = prune_and_finetune(
                base_model, task, pcfg, tcfg, self.out / "models" / row_id, sensitivity_path=sens_path,
                state_name=f"finetune_state-{key}.pt", progress=self.progress, log_prefix=f"[{row_id}] ",
                config={"model": r["model"], "num_classes": task.num_classes, "width_mult": r.get("width_mult", 1.0),
                        "model_kwargs": self.model_kwargs(row_id, task), "image_size": r["image_size"],
                        "classes": task.classes, "key": key})
        return model.eval(), task

    def model_of(self, row_id: str):
        """The PyTorch model a row produces (FP32 baseline or pruned + fine-tuned) and its task."""
        strategy = self.recipe(row_id)["strategy"]
        if strategy == "none":
            return self.baseline(row_id)
        if strategy == "prune":
            return self.pruned(row_id)
        raise ConfigError(f"row {row_id!r} ({strategy}) produces an ONNX file, not a PyTorch model")

    def control(self, root_id: str, tcfg, max_steps: int | None = None) -> dict:
        """The FP32 control of a row that trains after its FP32 root: the root's model fine-tuned with the same
        schedule (``tcfg``, ``max_steps``), exported and evaluated in ONNX Runtime like the root row. Computed once
        per (root, schedule) and cached as ``models/<root>/control-<key>.json``."""
        from ..export import export_onnx
        from ..runtime import OnnxPredictor
        from ..training import fit

        key = config_hash({"base": self.model_key(root_id), "train": tcfg.to_dict(), "max_steps": max_steps})
        ckpt = self.out / "models" / root_id
        result = ckpt / f"control-{key}.json"
        if result.is_file():
            return read_json(result)
        model, task = self.baseline(root_id)
        model = copy.deepcopy(model)
        print(f"[{root_id}] FP32 control: {tcfg.epochs} more epoch(s) at lr {tcfg.lr:g}", flush=True)
        with self.stage("control"):
            torch.manual_seed(tcfg.seed)
            model = fit(model, task.train_loader(tcfg.batch_size), task.loss_fn, tcfg, progress=self.progress,
                        state_path=ckpt / f"control_state-{key}.pt", max_steps=max_steps)
            path = export_onnx(model, ckpt / f"control-{key}.onnx", task.example_inputs())
            value = task.evaluate(OnnxPredictor(path, threads=2), progress=self.progress)[task.metric]
        (ckpt / f"control_state-{key}.pt").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        out = {"value": round(value, 3), "epochs": tcfg.epochs, "lr": tcfg.lr, "max_steps": max_steps, "key": key}
        write_json(result, out)
        return out


def curve_point(epoch: int, model, task) -> dict:
    """One point of a baseline's validation curve: the task's metrics of the PyTorch model after ``epoch`` (0-based),
    and the mean loss terms of the epoch where the task's loss records them (the detector's)."""
    from ..runtime import TorchPredictor

    was_training = model.training
    model.eval()
    try:
        metrics = task.evaluate(TorchPredictor(model, str(next(model.parameters()).device)))
    finally:
        model.train(was_training)
    point = {"epoch": epoch + 1, "value": round(metrics[task.metric], 3),
             "metrics": {k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)}}
    terms = getattr(task, "loss_terms", None)
    if terms:
        steps = max(1, terms.pop("steps", 1))
        point["loss_terms"] = {k: round(v / steps, 4) for k, v in terms.items()}
        terms.clear()
    return point
