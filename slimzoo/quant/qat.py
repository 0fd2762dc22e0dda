"""Quantization-aware training: fine-tune with fake quantization, export through the one QDQ writer.

The model is folded (BatchNorm into conv, i.e. BN statistics frozen from the start, which is
stable when fine-tuning a converged network) and exported; the QDQ plan of that ONNX graph
decides where the fake quantizers go, and the graph itself is trained as a PyTorch module
(``OnnxModule``). Weights: per-channel symmetric abs-max int8 with a straight-through
estimator; activations: uint8 ranges initialised by PTQ calibration, then kept, or following a
moving average of min/max until ``freeze_ranges_at``, or learned (``learn_ranges``, LSQ+). The trained
weights, biases and ranges become ``QuantParams`` and ``write_qdq`` writes the INT8 file, as for PTQ.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import reject_unknown_keys
from ..errors import ConfigError
from .preprocess import preprocess
from .ptq import PTQConfig
from .qdq import plan_qdq, unified_spans, unify_ranges, write_qdq
from .stem import stem_layers
from .qparams import QuantParams, activation_qparams, weight_qparams


@dataclass
class QATConfig:
    """Settings of quantization-aware fine-tuning."""

    epochs: int = 1
    max_steps: int | None = None  # cap on steps per epoch (None: whole epochs)
    lr: float = 1e-5  # a converged model needs only a nudge; 1e-4 cost 1.3 Top-1 on MobileNetV1
    weight_decay: float = 0.0
    batch_size: int = 64
    range_momentum: float = 0.9  # moving average of activation min/max
    # fraction of training after which activation ranges stop moving; 0 keeps the calibrated ranges
    # (MobileNetV2: -0.2 Top-1 with 0, -0.5 with 0.6, docs/quantization.md)
    freeze_ranges_at: float = 0.0
    # learn the activation ranges by gradient descent instead (LSQ+), at their own learning rate
    learn_ranges: bool = False
    range_lr: float = 1e-3
    seed: int = 0
    keep_fp32: list[str] = field(default_factory=list)
    # ranges start from PTQ's default calibration (percentile): MSE ranges cost one ResNet50 9.5 Top-1 in PTQ, and
    # QAT with those ranges kept ended 4.2 below FP32; from percentile ranges it ended 0.1 below (docs/quantization.md)
    calibration: PTQConfig = field(default_factory=PTQConfig)

    @classmethod
    def from_dict(cls, d: dict | None) -> QATConfig:
        d = reject_unknown_keys(cls, d, "QAT")
        if isinstance(d.get("calibration"), dict):
            d["calibration"] = PTQConfig.from_dict(d["calibration"])
        return cls(**d)

    def __post_init__(self):  # checked for the CLI's and the API's configs too, not only for recipes
        if not 0 <= self.freeze_ranges_at <= 1:
            raise ConfigError(f"freeze_ranges_at must be in [0, 1], got {self.freeze_ranges_at}")
        if self.lr <= 0 or self.range_lr <= 0:
            raise ConfigError(f"lr and range_lr must be positive, got {self.lr} and {self.range_lr}")

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_qat(model: nn.Module, example_inputs: torch.Tensor, calib_batches: Iterable, cfg: QATConfig):
    """(trainable fake-quant module, FP32 folded ONNX model, plan), ranges initialised by calibration."""
    import onnx

    from ..export import export_onnx, fold_batchnorm
    from .calibrate import collect_ranges
    from .onnx_module import OnnxModule

    with tempfile.TemporaryDirectory() as d:
        path = export_onnx(fold_batchnorm(model), Path(d) / "fp32_folded.onnx", example_inputs)
        onnx_model = onnx.load(str(path))
    preprocess(onnx_model, cfg.calibration.target)  # the graph PTQ quantizes (Pad fused, hard activations split)
    float_stem = set(stem_layers(onnx_model)) if cfg.calibration.stem == "float" else set()  # "auto": int8
    plan = plan_qdq(onnx_model, set(cfg.keep_fp32) | float_stem, cfg.calibration.target,
                    output_float=cfg.calibration.output_convs == "float")
    ranges = collect_ranges(onnx_model, plan.activations, calib_batches, method=cfg.calibration.calibration,
                            percentile=cfg.calibration.percentile)
    ranges = {t: ranges[t] for t in plan.activations}
    shared = {}  # a group the writer puts on one range (a Concat's inputs and output) trains with one quantizer
    for group, lo, hi in unified_spans(plan, QuantParams(activations={t: activation_qparams(*ranges[t])
                                                                      for t in plan.activations})):
        for t in group:
            ranges[t], shared[t] = (lo, hi), group[0]
    qmod = OnnxModule(onnx_model, ranges, {w: axis for w, (axis, _) in plan.weights.items()},
                      momentum=cfg.range_momentum, learn_ranges=cfg.learn_ranges, shared=shared)
    return qmod, onnx_model, plan


def qat_train_config(cfg: QATConfig):
    """The training schedule of QAT (also the zoo's FP32 control fine-tune of a QAT row)."""
    from ..training import TrainConfig

    return TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                       warmup_epochs=0.0, channels_last=False, seed=cfg.seed)


def qat_lr_multipliers(cfg: QATConfig) -> dict[str, float]:
    """The optimizer's learning-rate factors for QAT (``fit(..., lr_multipliers=...)`` /
    ``make_optimizer``): learned activation ranges move at ``range_lr``, everything else at ``lr``."""
    return {"act_fq.": cfg.range_lr / cfg.lr} if cfg.learn_ranges else {}


def export_qat(qmod, onnx_model, plan, out_path: str | Path, shape: tuple[int, ...] | None = None,
               cfg: PTQConfig | None = None) -> Path:
    """Write the INT8 QDQ file from a trained fake-quant module (same writer as PTQ). Depthwise convs off the
    int8 kernel's channel block are widened as in PTQ (``cfg.pad_channels``; "auto" times both files at ``shape``,
    one image; the outputs are the same either way)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(onnx_model)
    trained = qmod.float_initializers()
    for init in m.graph.initializer:
        if init.name in trained:
            init.CopyFrom(numpy_helper.from_array(trained[init.name].astype("float32"), init.name))
    ranges = qmod.act_ranges()
    qp = QuantParams(activations={t: activation_qparams(*ranges[t]) for t in plan.activations},
                     weights={w: weight_qparams(trained[w], axis) for w, (axis, _) in plan.weights.items()})
    qp = unify_ranges(plan, qp)
    pad = cfg.pad_channels if cfg is not None and cfg.target == "onnxruntime" else "off"
    if pad == "on":
        from .pad import pad_channels

        wide, wide_qp, _ = pad_channels(m, plan, qp)
        return write_qdq(wide, plan, wide_qp, out_path)
    path = write_qdq(m, plan, qp, out_path)
    if pad == "auto" and shape is not None:
        from .pad import choose_padding

        choose_padding(m, plan, qp, Path(path), shape)
    return path


def quantize_aware_train(model: nn.Module, example_inputs: torch.Tensor, train_loader: Iterable, loss_fn: Callable,
                         calib_batches: Iterable, out_path: str | Path, cfg: QATConfig | None = None, *,
                         progress: bool = True, timed: bool = True):
    """Fine-tune ``model`` with fake quantization and write the INT8 QDQ ONNX file. ``timed``: choices made by
    timing (``pad_channels="auto"``) are made; without it (the zoo's rows, whose files must not depend on the
    machine's load) they keep the untimed default.

    Returns (path, the trained fake-quant module in eval mode).
    """
    from ..training import fit

    cfg = cfg or QATConfig()
    torch.manual_seed(cfg.seed)
    qmod, onnx_model, plan = prepare_qat(model, example_inputs, calib_batches, cfg)
    tcfg = qat_train_config(cfg)

    def on_step(step: int, total: int) -> None:
        qmod.set_observing(step < cfg.freeze_ranges_at * total)

    qmod = fit(qmod, train_loader, loss_fn, tcfg, progress=progress, on_step=on_step, max_steps=cfg.max_steps,
               lr_multipliers=qat_lr_multipliers(cfg))
    qmod.set_observing(False)
    from .. import distributed

    # under torchrun every rank holds the same module (same calibration images, averaged gradients, rank 0's
    # range buffers broadcast by DDP); rank 0 writes the file, the others wait for it
    shape = (1, *example_inputs.shape[1:]) if timed else None
    path = export_qat(qmod, onnx_model, plan, out_path, shape, cfg.calibration) if distributed.is_main() \
        else Path(out_path)
    distributed.barrier()
    return path, qmod.eval()
