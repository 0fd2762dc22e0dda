"""The public facade: ``slimzoo.quantize``, ``quantize_with_accuracy_control``, ``prepare_qat``/``convert`` and
``slimzoo.prune``, shaped like the APIs users know (NNCF's ``quantize(model, dataset, transform_fn,
ignored_scope)``, torchao's config dataclasses, Torch-Pruning's ``ignored_layers``).

``data`` is any iterable of image batches or of ``(images, targets)`` pairs (a DataLoader); ``transform_fn``
maps one item of it to the model's input batch. A model is an ``nn.Module`` or the path of an FP32 ONNX file.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass
class QuantResult:
    """An INT8 QDQ ONNX file and what was measured about it."""

    path: Path
    check: Any = None  # slimzoo.quant.Int8Check: integer-op count and INT8/FP32 latency at one thread
    kept_fp32: list[str] = field(default_factory=list)  # layers left in float (accuracy control, ignored)
    metric: float | None = None  # the file's metric, where an evaluate function gave one

    def save(self, dest: str | Path) -> Path:
        """Copy the INT8 file to ``dest`` (a file or a folder); returns the new path."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / self.path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, dest)
        return dest


def _inputs(data: Iterable, transform_fn: Callable | None) -> Iterable:
    for item in data:
        yield transform_fn(item) if transform_fn is not None else item


def _out_path(out: str | Path | None) -> Path:
    return Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="slimzoo-")) / "model_int8.onnx"


def _config(config, ignored) -> Any:
    from .quant import PTQConfig

    cfg = config or PTQConfig()
    if not isinstance(cfg, PTQConfig):
        raise ConfigError(f"config must be a slimzoo.quant.PTQConfig, got {type(cfg).__name__}")
    if ignored:
        cfg = PTQConfig(**{**cfg.to_dict(), "keep_fp32": [*cfg.keep_fp32, *ignored]})
    return cfg


def prepare_onnx(path: str | Path, out: str | Path) -> Path:
    """A user's FP32 ONNX file made ready for quantization: BatchNorm folded into convs and constants folded by
    ONNX Runtime's basic (hardware-independent) optimizations. A BatchNormalization that cannot be folded (one
    that precedes its conv) stays, and runs in float between quantized layers."""
    import onnx
    import onnxruntime as ort

    src = Path(path)
    if not src.is_file():
        raise ConfigError(f"{src}: ONNX file not found")
    try:
        onnx.checker.check_model(str(src))
    except Exception as e:  # noqa: BLE001 - onnx raises several types for a file that is not ONNX
        raise ConfigError(f"{src}: not a valid ONNX model ({str(e).splitlines()[0][:200]})") from None
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    try:  # weights in a separate file (``torch.onnx.export``'s default for its exports) are read in from beside it
        data = onnx.load(str(src)).SerializeToString()
    except ValueError as e:  # protobuf's 2 GB limit
        raise ConfigError(f"{src}: too large to quantize in one piece ({e})") from None
    try:
        ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{src}: ONNX Runtime cannot load this file: {' '.join(str(e).split())[:300]}") from None
    m = onnx.load(str(out))
    inputs = [i for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    if len(inputs) != 1:
        raise ConfigError(f"{src}: has {len(inputs)} inputs; slimzoo quantizes models with one image input")
    return Path(out)


def quantize(model, data: Iterable, config=None, *, transform_fn: Callable | None = None,
             ignored: Iterable[str] = (), example_inputs=None, out: str | Path | None = None,
             check: bool = True) -> QuantResult:
    """INT8 post-training quantization of a PyTorch model or an FP32 ONNX file.

    ``config``: a :class:`slimzoo.quant.PTQConfig` (defaults when None; ``num_calibration`` images are taken from
    ``data``). ``ignored``: layers left in float (PyTorch module names or ONNX node names). ``out``: where the
    file goes (a temporary folder when None; ``result.save(dest)`` copies it). With ``check``, the result holds
    the integer-op count and the measured INT8/FP32 speed at one thread, and a warning says when the file is
    not faster.
    """
    from .quant.ptq import calibration_set, quantize_checked

    cfg = _config(config, tuple(ignored))
    out = _out_path(out)
    batches = calibration_set(_inputs(data, transform_fn), cfg.num_calibration, cfg.calibration_batch_size)
    if isinstance(model, (str, Path)):
        with tempfile.TemporaryDirectory() as d:
            fp32 = prepare_onnx(model, Path(d) / "fp32_prepared.onnx")
            path, checked = quantize_checked(fp32, out, batches, cfg, (1, *batches[0].shape[1:]), check=check)
        return QuantResult(path=path, kept_fp32=list(cfg.keep_fp32), check=checked)
    import torch

    from .quant.ptq import quantize as quantize_module

    x = example_inputs if example_inputs is not None else torch.from_numpy(batches[0][:1])
    path = quantize_module(model, x, [torch.from_numpy(b) for b in batches], out, cfg, check=check)
    result = QuantResult(path=Path(path), kept_fp32=list(cfg.keep_fp32))
    if check:
        from .storage import read_json
        from .quant.check import Int8Check

        d = read_json(Path(str(path) + ".check.json"))
        d.pop("speedup", None)
        result.check = Int8Check(**d)
    return result


def quantize_with_accuracy_control(model, data: Iterable, evaluate: Callable[[Path], float], max_drop: float,
                                   config=None, *, transform_fn: Callable | None = None, example_inputs=None,
                                   out: str | Path | None = None) -> QuantResult:
    """INT8 with the fewest layers left in float (most harmful first) so that ``evaluate(path)`` (the metric of an
    ONNX file, higher is better) drops at most ``max_drop`` below the FP32 file's."""
    from .quant.analysis import quantize_within_drop
    from .quant.ptq import calibration_set

    cfg = _config(config, ())
    out = _out_path(out)
    batches = calibration_set(_inputs(data, transform_fn), cfg.num_calibration, cfg.calibration_batch_size)
    with tempfile.TemporaryDirectory() as d:
        if isinstance(model, (str, Path)):
            fp32 = prepare_onnx(model, Path(d) / "fp32_prepared.onnx")
        else:
            import torch

            from .export import export_onnx, fold_batchnorm

            x = example_inputs if example_inputs is not None else torch.from_numpy(batches[0][:1])
            fp32 = export_onnx(fold_batchnorm(model), Path(d) / "fp32_folded.onnx", x)
        path, analysis = quantize_within_drop(fp32, batches, evaluate, out, max_drop, cfg=cfg, progress=False)
    done = analysis["accuracy_aware"]
    return QuantResult(path=Path(path), kept_fp32=done["kept_fp32"], metric=done["metric"])


def prepare_qat(model, data: Iterable, config=None, *, transform_fn: Callable | None = None, example_inputs=None):
    """A trainable copy of ``model`` with fake quantization where the INT8 file will quantize, its activation
    ranges calibrated on ``data``. Train it in your own loop (it is an ``nn.Module``), then :func:`convert`."""
    import torch

    from .quant.ptq import calibration_set
    from .quant.qat import QATConfig
    from .quant.qat import prepare_qat as _prepare

    cfg = config or QATConfig()
    if not isinstance(cfg, QATConfig):
        raise ConfigError(f"config must be a slimzoo.quant.qat.QATConfig, got {type(cfg).__name__}")
    batches = calibration_set(_inputs(data, transform_fn), cfg.calibration.num_calibration,
                              cfg.calibration.calibration_batch_size)
    x = example_inputs if example_inputs is not None else torch.from_numpy(batches[0][:1])
    qmod, onnx_model, plan = _prepare(model, x, batches, cfg)
    qmod.slimzoo_qat = (onnx_model, plan, (1, *x.shape[1:]), cfg.calibration)  # what convert() needs
    return qmod


def convert(qat_model, out: str | Path) -> QuantResult:
    """Write the INT8 QDQ ONNX file of a model from :func:`prepare_qat` after training."""
    from .quant.qat import export_qat

    if not hasattr(qat_model, "slimzoo_qat"):
        raise ConfigError("convert() takes the model returned by slimzoo.prepare_qat (after your training)")
    qat_model.set_observing(False)
    onnx_model, plan, shape, cfg = qat_model.slimzoo_qat
    return QuantResult(path=Path(export_qat(qat_model.eval(), onnx_model, plan, out, shape, cfg)))
