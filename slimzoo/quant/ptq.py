"""Post-training static INT8 quantization: fold BN, export, calibrate, write QDQ ONNX."""
from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
import numpy as np

from ..config import reject_unknown_keys
from ..errors import ConfigError
from .calibrate import collect_ranges, first_images
from .check import Int8Check, check_int8, input_shape
from .preprocess import preprocess
from .qdq import QdqPlan, compute_qparams, plan_qdq, write_qdq
from .qparams import QuantParams
from .grouped import choose_grouped, grouped_convs
from .stem import choose_stem, stem_layers


class Int8Warning(UserWarning):
    """An INT8 file that is valid but not what was asked for: layers left in float, or not faster than FP32."""


@dataclass
class PTQConfig:
    """Settings of post-training quantization (per-channel int8 weights, uint8 activations)."""

    # minmax | percentile | mse | entropy, or auto (percentile or mse, whichever keeps the output closer to FP32 on
    # the calibration images: quant.range_choice); the default was chosen by measurement (docs/quantization.md)
    calibration: str = "percentile"
    percentile: float = 99.99
    num_calibration: int = 256
    # False, True (every quantized conv/gemm) or "depthwise" (depthwise convs only, the default: better than none on
    # every depthwise network measured, and the same as none on the others; all layers hurt EfficientNet-B0 and
    # ResNet50: benchmarks/bias_correction_rule.py, docs/quantization.md)
    bias_correction: bool | str = "depthwise"
    bias_correction_images: int = 256
    equalize: bool = False  # cross-layer equalization of conv pairs joined by ReLU (quant.equalize)
    adaround: bool = False  # learned weight rounding per layer (quant.adaround); minutes, not seconds
    adaround_iters: int = 300
    adaround_images: int = 256
    calibration_batch_size: int = 32
    keep_fp32: list[str] = field(default_factory=list)  # ONNX node names left in float
    target: str = "onnxruntime"  # the runtime the placement is made for: onnxruntime | openvino (qdq.plan_qdq)
    # the first conv (3 input channels): "auto" writes the file both ways when it is checked and keeps the faster
    # at one thread (quant.stem); "int8" or "float" decide without measuring (an unchecked "auto" stays int8)
    stem: str = "auto"
    # grouped convs with several channels per group (ResNeXt, RegNet): "auto" times each in int8 and in float in a
    # small chain when the file is checked and keeps float where that is clearly faster (quant.grouped), and so
    # each depthwise conv off the int8 kernel's channel block that cannot be widened (GhostNet's); "int8" or "float"
    # decide without measuring for the grouped ones (an unchecked "auto" stays int8)
    grouped_convs: str = "auto"
    # depthwise convs whose channel count is not a multiple of ONNX Runtime's int8 kernel block (16) widened with zero
    # channels, exactly (quant.pad): "auto" writes the file both ways when it is checked and keeps the widened one
    # where it is faster at one thread; "on" widens without measuring, "off" never (an unchecked "auto" does not)
    pad_channels: str = "auto"
    # convs whose output no integer op reads (a detector's prediction convs before its float box decoding, a
    # segmenter's classifier before a float Resize), each holding under 2% of the weights: "float" runs them in
    # float, so the predictions are not rounded to one uint8 grid (YOLOv3: -0.80 -> +0.02 box mAP; quant.qdq
    # output_convs); "int8" quantizes them like every other conv
    output_convs: str = "float"

    def __post_init__(self):  # checked however the config is built (API, CLI, recipe)
        from .calibrate import METHODS
        from .grouped import GROUPED
        from .pad import PADS
        from .qdq import OUTPUT_CONVS, TARGETS
        from .stem import STEMS

        if self.target not in TARGETS:
            raise ConfigError(f"quantization target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {', '.join(STEMS)}, got {self.stem!r}")
        if self.grouped_convs not in GROUPED:
            raise ConfigError(f"grouped_convs must be one of {', '.join(GROUPED)}, got {self.grouped_convs!r}")
        if self.pad_channels not in PADS:
            raise ConfigError(f"pad_channels must be one of {', '.join(PADS)}, got {self.pad_channels!r}")
        if self.output_convs not in OUTPUT_CONVS:
            raise ConfigError(f"output_convs must be one of {', '.join(OUTPUT_CONVS)}, got {self.output_convs!r}")
        if self.calibration not in (*METHODS, "auto"):
            raise ConfigError(f"calibration must be one of {', '.join(METHODS)}, auto; got {self.calibration!r}")
        if self.bias_correction not in (False, True, "depthwise"):
            raise ConfigError(f"bias_correction must be true, false or 'depthwise', got {self.bias_correction!r}")
        if not 50 < float(self.percentile) <= 100:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        for name in ("num_calibration", "calibration_batch_size", "bias_correction_images", "adaround_iters",
                     "adaround_images"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.keep_fp32, str) or not all(isinstance(k, str) for k in self.keep_fp32):
            raise ConfigError(f"keep_fp32 must be a list of layer names, got {self.keep_fp32!r}")
        self.keep_fp32 = list(self.keep_fp32)

    @classmethod
    def from_dict(cls, d: dict | None) -> PTQConfig:
        return cls(**reject_unknown_keys(cls, d, "quantization"))

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_set(batches: Iterable, num_images: int, batch_size: int) -> list[np.ndarray]:
    """The first ``num_images`` images of ``batches`` as float32 arrays of ``batch_size`` images.

    A batch may be a tensor or array of images, or an ``(images, targets)`` pair (a DataLoader's).
    """
    if num_images < 1 or batch_size < 1:
        raise ConfigError(f"num_calibration and calibration_batch_size must be at least 1, got {num_images} "
                          f"and {batch_size}")
    images, seen = [], 0
    for b in batches:
        if isinstance(b, (tuple, list)):
            b = b[0]
        b = np.asarray(b.detach().cpu().numpy() if hasattr(b, "detach") else b, dtype=np.float32)
        images.append(b[: num_images - seen])
        seen += len(images[-1])
        if seen >= num_images:
            break
    if not images:
        raise ConfigError("no calibration images: the calibration data yielded no batch")
    x = np.concatenate(images) if len(images) > 1 else images[0]
    return [x[i: i + batch_size] for i in range(0, len(x), batch_size)]


@dataclass
class PreparedPTQ:
    """What post-training quantization decides before a file is written: the graph it quantizes (preprocessed,
    equalized), the placement, the quantization parameters (calibrated, AdaRound, bias correction) and the
    calibration batches."""

    model: object
    plan: QdqPlan
    qparams: QuantParams
    batches: list
    range_choice: dict | None = None  # calibration="auto": the method kept, each candidate's agreement and SQNR


def prepare_ptq(fp32_path: str | Path, batches: Iterable, cfg: PTQConfig | None = None, *,
                all_images: bool = False, rounded: QuantParams | None = None) -> PreparedPTQ:
    """The one PTQ pipeline (the CLI, the API, the zoo, the per-layer analysis and the accuracy-aware mode all run
    it): preprocess, equalize, plan, calibrate, AdaRound, bias correction, as ``cfg`` says. With ``all_images``
    every image of ``batches`` calibrates (the analysis'), else the first ``cfg.num_calibration``. ``rounded``:
    the learned roundings of an earlier run on the same images (the other stem's file), reused where they cover
    every quantized weight at the same scales (AdaRound learns each layer from FP32 inputs, so the stem's
    precision does not change the other layers' roundings)."""
    import onnx

    cfg = cfg or PTQConfig()
    model = onnx.load(str(fp32_path))
    preprocess(model, cfg.target)
    if cfg.equalize:
        from .equalize import equalize_cross_layer

        model = equalize_cross_layer(model)
    if all_images:
        batches = [np.asarray(b.numpy() if hasattr(b, "numpy") else b, np.float32) for b in batches]
    else:
        batches = calibration_set(batches, cfg.num_calibration, cfg.calibration_batch_size)
    keep = set(cfg.keep_fp32) | (set(stem_layers(model)) if cfg.stem == "float" else set())
    if cfg.grouped_convs == "float":
        keep |= set(grouped_convs(model))
    plan = plan_qdq(model, keep, cfg.target, output_float=cfg.output_convs == "float")
    symmetric = cfg.target == "openvino"
    choice = None
    if cfg.calibration == "auto":  # percentile or MSE, by agreement with FP32 on calibration images (range_choice)
        from .range_choice import choose_ranges

        ranges, choice = choose_ranges(model, plan, batches, cfg.percentile,
                                       lambda r: compute_qparams(model, plan, r, symmetric=symmetric))
    else:
        ranges = collect_ranges(model, plan.activations, batches, method=cfg.calibration, percentile=cfg.percentile)
    qp = compute_qparams(model, plan, ranges, symmetric=symmetric)
    if cfg.adaround and rounded is not None and all(
            w in rounded.weights and np.array_equal(rounded.weights[w].scale, q.scale) for w, q in qp.weights.items()):
        for w, q in qp.weights.items():
            q.qweight = rounded.weights[w].qweight.copy()
    elif cfg.adaround:
        from .adaround import AdaRoundConfig, adaround

        qp = adaround(model, plan, qp, first_images(batches, cfg.adaround_images),
                      AdaRoundConfig(iters=cfg.adaround_iters))
    if cfg.bias_correction:
        from .bias_correction import correct_biases

        qp = correct_biases(model, plan, qp, first_images(batches, cfg.bias_correction_images),
                            depthwise_only=cfg.bias_correction == "depthwise")
    return PreparedPTQ(model, plan, qp, batches, choice)


def quantize_onnx(fp32_path: str | Path, out_path: str | Path, batches: Iterable, cfg: PTQConfig | None = None,
                  *, rounded: QuantParams | None = None) -> tuple[Path, QuantParams, QdqPlan]:
    """Quantize an FP32 ONNX file (BN already folded) into a QDQ INT8 ONNX file (``rounded``: as in
    :func:`prepare_ptq`)."""
    prep = prepare_ptq(fp32_path, batches, cfg, rounded=rounded)
    return _write(prep, cfg or PTQConfig(), out_path, cfg is not None and cfg.pad_channels == "on"), \
        prep.qparams, prep.plan


def _write(prep: PreparedPTQ, cfg: PTQConfig, out_path: str | Path, widen: bool) -> Path:
    """Write the prepared file, with the depthwise convs widened to the int8 kernel's block (``quant.pad``) if
    ``widen`` (for ONNX Runtime only: OpenVINO's kernels are its own)."""
    model, qp = prep.model, prep.qparams
    if widen and cfg.target == "onnxruntime":
        from .pad import pad_channels

        model, qp, _ = pad_channels(model, prep.plan, qp)
    return write_qdq(model, prep.plan, qp, out_path)


def quantize(model: nn.Module, example_inputs: torch.Tensor, batches: Iterable, out_path: str | Path,
             cfg: PTQConfig | None = None, *, check: bool = True) -> Path:
    """Quantize a PyTorch model to an INT8 QDQ ONNX file (task-agnostic: any model, any image batches).

    With ``check`` (the default), the file is then read as ONNX Runtime runs it and timed against the FP32
    model at one thread (:func:`slimzoo.quant.check.check_int8`); the figures are written beside the file
    (``<file>.check.json``) and a warning says plainly when a weighted layer stayed in float or the INT8
    file is not faster; with ``cfg.stem == "auto"`` the first conv's precision is chosen by measurement
    (:mod:`slimzoo.quant.stem`).
    """
    from ..export import export_onnx, fold_batchnorm

    with tempfile.TemporaryDirectory() as d:
        fp32 = export_onnx(fold_batchnorm(model), Path(d) / "fp32_folded.onnx", example_inputs)
        path, _ = quantize_checked(fp32, out_path, batches, cfg, (1, *example_inputs.shape[1:]), check=check)
    return path


def quantize_checked(fp32_path: str | Path, out_path: str | Path, batches: Iterable, cfg: PTQConfig | None,
                     shape: tuple[int, ...], *, check: bool = True) -> tuple[Path, Int8Check | None]:
    """What ``quantize_onnx`` does, with (when ``check``) the measured choices: grouped convs in int8 or float
    (``cfg.grouped_convs == "auto"``, each timed in a small chain before the file is written), then the stem
    (``cfg.stem == "auto"``: the file written with the first conv in int8 and in float, the faster kept), the
    depthwise convs off the int8 kernel's channel block widened or not (``cfg.pad_channels == "auto"``: both files
    timed, ``quant.pad``), and the check of what ONNX Runtime makes of the file (``report_check``). The one path of
    the API, the CLI and :func:`quantize`."""
    import onnx

    cfg = cfg or PTQConfig()
    batches = calibration_set(batches, cfg.num_calibration, cfg.calibration_batch_size)
    fixed = input_shape(fp32_path)[0]  # a file exported with a fixed batch (torch.onnx.export's default: 1) runs at it
    shape = (fixed, *shape[1:]) if fixed != 1 else shape
    grouped = None
    if check and cfg.grouped_convs == "auto" and cfg.target == "onnxruntime":  # measured in ONNX Runtime, for it
        model = onnx.load(str(fp32_path))
        preprocess(model, cfg.target)
        grouped = choose_grouped(model, shape, set(cfg.keep_fp32), widen=cfg.pad_channels != "off")
        if grouped["float"]:  # from here on an explicit choice, for this file and the other stem's
            cfg = PTQConfig(**{**cfg.to_dict(), "keep_fp32": [*cfg.keep_fp32, *grouped["float"]]})
        if not grouped["layers"] and not grouped["untimed"]:
            grouped = None
    prep = prepare_ptq(fp32_path, batches, cfg)
    path = _write(prep, cfg, out_path, cfg.pad_channels == "on")
    if not check:
        return Path(path), None
    decision, range_choice = None, prep.range_choice
    stems = [s for s in stem_layers(onnx.load(str(fp32_path))) if s not in prep.plan.kept_fp32]
    if cfg.stem == "auto" and stems and cfg.target == "onnxruntime":  # measured in ONNX Runtime, for it
        alt = Path(path).with_name(Path(path).stem + ".float-stem.onnx")
        # the same settings with the stem in float; a range method chosen by calibration="auto" is not chosen again
        method = prep.range_choice["chosen"] if prep.range_choice else cfg.calibration
        alt_cfg = PTQConfig(**{**cfg.to_dict(), "stem": "float", "calibration": method})
        alt_prep = prepare_ptq(fp32_path, batches, alt_cfg, rounded=prep.qparams)  # roundings reused
        _write(alt_prep, cfg, alt, cfg.pad_channels == "on")
        decision = choose_stem(Path(path), alt, stems, shape)
        prep = alt_prep if decision["chosen"] == "float" else prep
    widened = None
    if cfg.pad_channels == "auto" and cfg.target == "onnxruntime":  # measured in ONNX Runtime, for it
        from .pad import choose_padding

        widened = choose_padding(prep.model, prep.plan, prep.qparams, Path(path), shape)
    result = check_int8(fp32_path, path, shape, runtime=_check_runtime(cfg.target))
    result.stem = decision
    result.grouped = grouped
    result.widened = widened
    result.kept_float = len(prep.plan.kept_fp32)
    result.calibration = range_choice
    return Path(path), report_check(result, path)


def _check_runtime(target: str) -> str:
    """The runtime a file placed for ``target`` is checked in: its own where it is installed (OpenVINO is an extra;
    without it an OpenVINO file is checked in ONNX Runtime, and the check says so)."""
    if target == "openvino":
        import importlib.util
        import warnings

        if importlib.util.find_spec("openvino") is not None:
            return "openvino"
        warnings.warn("OpenVINO is not installed (pip install 'slimzoo[openvino]'): the file placed for OpenVINO is "
                      "checked in ONNX Runtime, whose figures do not say how it runs in OpenVINO", Int8Warning,
                      stacklevel=3)
    return "onnxruntime"


def report_check(result: Int8Check, path: str | Path) -> Int8Check:
    """Write ``result`` beside ``path`` (``<file>.check.json``) and warn about each problem it shows."""
    import warnings

    from ..storage import write_json

    write_json(Path(str(path) + ".check.json"), result.to_dict())
    for problem in result.problems():
        warnings.warn(f"{path}: {problem}", Int8Warning, stacklevel=3)
    return result
