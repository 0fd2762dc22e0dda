"""One small strategy per kind of zoo row, behind one interface: given the runner and a resolved recipe, produce
the row's deployable ONNX file (and the PyTorch model whose FLOPs it reports).

``none`` exports the FP32 baseline, ``prune`` the pruned and fine-tuned model, ``quant`` runs PTQ on the base's
model, ``qat`` quantization-aware fine-tuning. Strategies that train after their base name the schedule of that
training (:meth:`Strategy.extra_training`), from which the runner builds the FP32 control.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..storage import write_json


@dataclass
class Produced:
    path: Path  # the deployable ONNX file
    model: object  # the PyTorch model it came from (FLOPs, params)
    task: object
    extra: dict  # fields added to the result row


class Runner(Protocol):
    """What a strategy needs from the runner."""

    out: Path
    progress: bool

    def model_of(self, row_id: str): ...

    def stage(self, name: str): ...


class Strategy(Protocol):
    def produce(self, runner: Runner, r: dict, row_dir: Path) -> Produced: ...

    def extra_training(self, r: dict):
        """(TrainConfig, max_steps) of the training this row does after its base, or None."""


class Export:
    """``none`` and ``prune``: the row's own PyTorch model, exported to FP32 ONNX."""

    def produce(self, runner: Runner, r: dict, row_dir: Path) -> Produced:
        from ..export import export_onnx

        model, task = runner.model_of(r["id"])
        with runner.stage("export"):
            path = export_onnx(model, row_dir / "model_fp32.onnx", task.example_inputs())
        extra = {}
        cfg_file = runner.out / "models" / r["id"] / "config.json"
        if r["strategy"] == "none" and r["id"] not in getattr(runner, "weights", {}) and cfg_file.is_file():
            from ..storage import read_json

            if curve := read_json(cfg_file).get("curve"):  # the baseline's validation curve, epoch by epoch
                extra["curve"] = curve
        return Produced(path, model, task, extra)

    def extra_training(self, r: dict):
        if r["strategy"] != "prune":
            return None
        from ..training import TrainConfig

        tcfg = TrainConfig.from_dict(r.get("finetune"))
        return (tcfg, None) if tcfg.epochs else None


class PTQ:
    def produce(self, runner: Runner, r: dict, row_dir: Path) -> Produced:
        from ..quant import PTQConfig, quantize

        model, task = runner.model_of(r["base"])
        qcfg = PTQConfig.from_dict(r.get("quant"))
        example = task.example_inputs()
        print(f"[{r['id']}] quantizing with {qcfg.num_calibration} calibration images", flush=True)
        with runner.stage("quantize"):
            path = quantize(model, example, task.calibration_batches(qcfg.num_calibration,
                                                                      qcfg.calibration_batch_size),
                            row_dir / "model_int8.onnx", qcfg, check=False)  # timed by the runner, at bench size
        if r.get("analyze_layers"):
            with runner.stage("layer_analysis"):
                _layer_sqnr(runner, r, model, example, task, qcfg, row_dir / "quant_layers.json")
        return Produced(path, model, task, {})

    def extra_training(self, r: dict):
        return None


class QAT:
    def produce(self, runner: Runner, r: dict, row_dir: Path) -> Produced:
        from ..quant.qat import QATConfig, quantize_aware_train

        model, task = runner.model_of(r["base"])
        qcfg = QATConfig.from_dict(r.get("qat"))
        print(f"[{r['id']}] quantization-aware training, {qcfg.epochs} epoch(s)", flush=True)
        with runner.stage("qat"):
            path, _ = quantize_aware_train(
                model, task.example_inputs(), task.train_loader(qcfg.batch_size), task.loss_fn,
                task.calibration_batches(qcfg.calibration.num_calibration, qcfg.calibration.calibration_batch_size),
                row_dir / "model_int8_qat.onnx", qcfg, progress=runner.progress, timed=False)
        return Produced(path, model, task, {})

    def extra_training(self, r: dict):
        from ..quant.qat import QATConfig, qat_train_config

        qcfg = QATConfig.from_dict(r.get("qat"))
        return qat_train_config(qcfg), qcfg.max_steps


STRATEGIES: dict[str, Strategy] = {"none": Export(), "prune": Export(), "quant": PTQ(), "qat": QAT()}


def _layer_sqnr(runner: Runner, r: dict, model, example, task, qcfg, path: Path) -> None:
    """Per-layer INT8 error (output SQNR with only that layer quantized) on a few calibration images, for the
    report; the metric change per layer is `slimzoo quant --analyze`'s (costlier) job."""
    import tempfile

    from ..export import export_onnx, fold_batchnorm
    from ..quant.analysis import analyze_layers

    n = int(r["analyze_layers"]) if not isinstance(r["analyze_layers"], bool) else 32
    print(f"[{r['id']}] per-layer INT8 error on {n} images", flush=True)
    with tempfile.TemporaryDirectory() as d:
        fp32 = export_onnx(fold_batchnorm(model), Path(d) / "fp32_folded.onnx", example)
        res = analyze_layers(fp32, list(task.calibration_batches(n, 16)), None, cfg=qcfg, progress=runner.progress)
    write_json(path, {"row": r["id"], "model": r["model"], "images": n, **res})
