"""The ``slimzoo`` command: a thin layer that builds configs and calls the library."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cli_args as A
from .errors import ConfigError, SlimzooError

def task_of_folder(root: Path) -> str:
    """``detection``, ``segmentation`` or ``classification`` (see :func:`slimzoo.tasks.task_of_folder`)."""
    from .tasks import task_of_folder as detect

    return detect(root)


# the runtimes of slimzoo.runtime.RUNTIMES, spelled out so that `slimzoo --help` imports neither torch nor ORT
RUNTIMES = ("onnxruntime", "openvino", "onnxruntime-cuda", "onnxruntime-tensorrt")


def _task(args, data: str | None = None):
    """The task of the dataset folder: detection for COCO/VOC layouts, segmentation for PaddleSeg lists
    (``images/x labels/x`` lines) or the Cityscapes layout, else classification."""
    from .tasks import get_task, task_of_folder

    root = Path(data or args.data)
    name = task_of_folder(root)
    kw = {"skip_bad_samples": getattr(args, "skip_bad_samples", False)}
    if name == "segmentation" and getattr(args, "eval_size", None):
        kw["eval_size"] = A.hw(args.eval_size, "--eval-size")
    return get_task(name, data_root=root, image_size=args.image_size, batch_size=args.batch_size,
                    num_workers=args.workers, **kw)


def _model(args, num_classes: int | None = None, task=None):
    """A model from ``--checkpoint DIR`` or ``--model SPEC [--weights FILE] [--model-kwargs JSON]``; with ``task``,
    a classifier whose output size is not the dataset's class count is refused."""
    from .checkpoint import load_checkpoint
    from .models import create_model

    if getattr(args, "checkpoint", None):
        model, cfg = load_checkpoint(args.checkpoint)
        if task is not None:
            from .checkpoint import check_classes

            check_classes(cfg, task, f"{args.checkpoint}/config.json")
    elif not getattr(args, "model", None):
        raise ConfigError("give --checkpoint DIR (from `slimzoo train`) or --model NAME [--weights FILE]")
    else:
        kwargs = _model_kwargs(getattr(args, "model_kwargs", None))
        nc = kwargs.pop("num_classes", None) or args.num_classes
        if ":" not in args.model:
            kwargs["width_mult"] = args.width_mult
        if not (":" in args.model and not args.model.startswith(("torchvision:", "timm:"))):
            nc = nc or num_classes or 1000  # a user's factory gets num_classes only where the user gave it
        model = create_model(args.model, num_classes=nc, weights=args.weights, **kwargs).eval()
    if task is not None:
        from .tasks import check_model_fits

        check_model_fits(task, model.eval(), f"model {getattr(args, 'model', None) or args.checkpoint}")
    return model.eval()


def _model_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        kw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-kwargs must be a JSON object such as '{{\"num_classes\": 10}}': {e}") from None
    if not isinstance(kw, dict):
        raise ConfigError(f"--model-kwargs must be a JSON object, got {type(kw).__name__}")
    return kw


def cmd_list_models(args) -> None:
    from .models import list_models, model_task

    for n in list_models(args.pattern):
        print(f"{n}\t{model_task(n)}")


def _synth_format(args, allowed: tuple[str, ...]) -> str:
    if args.format is None:
        return allowed[0]
    if args.format not in allowed:
        raise ConfigError(f"--format {args.format} is not a {args.task} format; choose one of {', '.join(allowed)}")
    return args.format


def cmd_data_synth(args) -> None:
    if args.task == "det":
        from .data.synth_det import write_synth_det

        fmt = _synth_format(args, ("coco", "voc"))
        out = write_synth_det(args.out, fmt=fmt, num_train=args.num_train, num_val=args.num_val,
                              size=args.size, seed=args.seed)
        print(f"wrote synthetic detection dataset ({fmt}) to {out}")
        return
    if args.task == "seg":
        from .data.synth_seg import write_synth_seg

        fmt = _synth_format(args, ("paddleseg", "cityscapes"))
        h, w = A.hw(args.seg_size, "--seg-size")
        out = write_synth_seg(args.out, fmt=fmt, num_train=args.num_train, num_val=args.num_val, width=w, height=h,
                              seed=args.seed)
        print(f"wrote synthetic segmentation dataset ({fmt}) to {out}")
        return
    from .data.synth_cls import write_synth_cls

    out = write_synth_cls(args.out, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=args.seed)
    print(f"wrote synthetic classification dataset to {out}")


def cmd_train(args) -> None:
    import torch

    from .checkpoint import save_checkpoint
    from .models import create_model
    from .training import TrainConfig, fit

    task = _task(args)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                      weight_decay=args.weight_decay, amp=args.amp, seed=args.seed, num_workers=args.workers,
                      device=args.device)
    torch.manual_seed(cfg.seed)
    kwargs = _model_kwargs(getattr(args, "model_kwargs", None))
    kwargs.setdefault("num_classes", task.num_classes)
    if args.anchors == "kmeans":
        if task.name != "detection":
            raise ConfigError("--anchors kmeans: only for detection data (it fits the detector's anchors to the "
                              "training boxes)")
        from .tasks.detection import fit_dataset_anchors

        kwargs.update(anchors=fit_dataset_anchors(task), anchor_size=task.image_size)
        print(f"anchors (w, h at {task.image_size}px), fitted by k-means: {kwargs['anchors']}")
    model = create_model(args.model, weights=args.weights, **kwargs,
                         **({} if ":" in args.model else {"width_mult": args.width_mult}))
    if args.backbone_weights:
        from .models import load_backbone
        from .storage import load_state_dict_file

        src = Path(args.backbone_weights)
        n = load_backbone(model, load_state_dict_file(src / "model.safetensors" if src.is_dir() else src))
        print(f"backbone initialised from {src} ({n} tensors)")
    out = Path(args.out)
    if args.restart:
        (out / "train_state.pt").unlink(missing_ok=True)
    fingerprint = {"data": Path(args.data).resolve(), "model": args.model, "model_kwargs": kwargs,
                   "weights": args.weights, "backbone_weights": args.backbone_weights, "image_size": args.image_size}
    model = fit(model, task.train_loader(), task.loss_fn, cfg, state_path=out / "train_state.pt",
                fingerprint=fingerprint)
    metrics = task.evaluate(_torch_predictor(model, args.device), progress=True)
    from . import distributed

    if distributed.is_main():  # under torchrun, rank 0 writes
        extra = {k: v for k, v in kwargs.items() if k not in ("num_classes", "width_mult")}
        save_checkpoint(model, out, {"model": args.model, "num_classes": task.num_classes,
                                     "width_mult": args.width_mult, "model_kwargs": extra,
                                     "image_size": args.image_size,
                                     "classes": task.classes, "data": str(args.data), "train": cfg.to_dict(),
                                     "val_metrics": metrics, "world_size": distributed.world_size()})
        (out / "train_state.pt").unlink(missing_ok=True)
        print(json.dumps({"checkpoint": str(out), **metrics}, indent=2))
    distributed.barrier()


def _torch_predictor(model, device: str = "cpu"):
    from .runtime import TorchPredictor

    return TorchPredictor(model, device)


def cmd_eval(args) -> None:
    from .runtime import onnx_predictor

    from .tasks import check_model_fits

    task = _task(args)
    predictor = onnx_predictor(args.onnx, args.runtime, threads=args.threads) if args.onnx else _torch_predictor(
        _model(args, task.num_classes, task), args.device)
    check_model_fits(task, predictor, str(args.onnx or args.model or args.checkpoint))
    metrics = task.evaluate(predictor, progress=True)
    print(json.dumps(metrics, indent=2))


def cmd_export(args) -> None:
    import torch

    from .export import export_onnx

    model = _model(args)
    path = export_onnx(model, args.out, torch.randn(1, 3, args.image_size, args.image_size))
    print(f"wrote {path}")


def cmd_quant(args) -> None:
    import tempfile
    import warnings

    import torch

    from .export import export_onnx, fold_batchnorm
    from .quant import PTQConfig
    from .quant.check import check_int8
    from .quant.ptq import Int8Warning, _check_runtime, quantize_checked, report_check
    from .runtime import OnnxPredictor
    from .storage import write_json

    task = _task(args)
    bias_correction = {"all": True, "none": False, "depthwise": "depthwise"}[args.bias_correction]
    cfg = PTQConfig(calibration=args.calibration, num_calibration=args.num_calibration,
                    keep_fp32=args.keep_fp32 or [], bias_correction=bias_correction, adaround=args.adaround,
                    adaround_iters=args.adaround_iters, target=args.target, stem=args.stem,
                    grouped_convs=args.grouped_convs, pad_channels=args.pad_channels, output_convs=args.output_convs)
    calib = list(task.calibration_batches(cfg.num_calibration, cfg.calibration_batch_size))
    out = Path(args.out)

    def evaluate(path) -> float:
        return task.evaluate(OnnxPredictor(path), limit=args.analysis_images)[task.metric]

    with tempfile.TemporaryDirectory() as d:
        if args.onnx:  # the user's own FP32 file: BatchNorm and constants folded by ONNX Runtime first
            from .api import prepare_onnx
            from .tasks import check_model_fits

            fp32 = prepare_onnx(args.onnx, Path(d) / "fp32_prepared.onnx")
            check_model_fits(task, OnnxPredictor(fp32), str(args.onnx))
        else:
            fp32 = export_onnx(fold_batchnorm(_model(args, task.num_classes, task)), Path(d) / "fp32_folded.onnx",
                               torch.randn(1, 3, args.image_size, args.image_size))
        if args.analyze or args.max_drop is not None:
            from .quant.analysis import analyze_layers, plot_analysis, quantize_within_drop

            if args.max_drop is not None:
                _, analysis = quantize_within_drop(fp32, calib, evaluate, out, args.max_drop, cfg=cfg)
                kept = analysis["accuracy_aware"]["kept_fp32"]
                print(f"kept {len(kept)} layer(s) in FP32 to stay within {args.max_drop}: {kept}")
            else:
                analysis = analyze_layers(fp32, calib, evaluate, cfg=cfg)
            write_json(out.with_suffix(".analysis.json"), analysis)
            plot_analysis(analysis, out.with_suffix(".analysis.png"))
            print(f"wrote {out.with_suffix('.analysis.json')} and {out.with_suffix('.analysis.png')}")
        shape = (1, 3, args.image_size, args.image_size)
        with warnings.catch_warnings(record=True) as caught:  # printed below, after the summary
            warnings.simplefilter("always", Int8Warning)
            checked = None
            if args.max_drop is None:
                _, checked = quantize_checked(fp32, out, calib, cfg, shape, check=not args.no_check)
            elif not args.no_check:
                checked = report_check(check_int8(fp32, out, shape, runtime=_check_runtime(cfg.target)), out)
        print(f"wrote {out}")
        if checked is not None:
            print(checked.summary() + f" (written to {out}.check.json)")
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    if not args.no_eval:
        print(json.dumps(task.evaluate(OnnxPredictor(out), progress=True), indent=2))


def cmd_qat(args) -> None:
    from .quant.qat import QATConfig, quantize_aware_train
    from .runtime import OnnxPredictor

    task = _task(args)
    model = _model(args, task.num_classes, task)
    cfg = QATConfig(epochs=args.epochs, max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
                    freeze_ranges_at=args.freeze_ranges_at, learn_ranges=args.learn_ranges, range_lr=args.range_lr,
                    keep_fp32=args.keep_fp32 or [])
    path, _ = quantize_aware_train(model, task.example_inputs(), task.train_loader(cfg.batch_size), task.loss_fn,
                                   task.calibration_batches(cfg.calibration.num_calibration), args.out, cfg)
    from . import distributed

    if distributed.is_main():
        print(f"wrote {path}")
    metrics = task.evaluate(OnnxPredictor(path), progress=distributed.is_main())  # sharded under torchrun
    if distributed.is_main():
        print(json.dumps(metrics, indent=2))


def _sensitivity_config(args, file_cfg: dict | None = None):
    from .prune import SensitivityConfig

    if file_cfg is not None:
        return SensitivityConfig.from_dict(file_cfg)
    return SensitivityConfig.from_dict({"ratios": args.ratios, "stop_loss": args.stop_loss,
                                        "importance": args.importance, "round_to": args.round_to,
                                        "eval_images": args.eval_images, "ignored": args.ignore or []})


def _evaluate_torch(task, limit):
    from .runtime import TorchPredictor

    return lambda m: task.evaluate(TorchPredictor(m), limit=limit)[task.metric]


def cmd_sensitivity(args) -> None:
    from .prune import analyze_sensitivity, plot_sensitivity

    task = _task(args)
    model = _model(args, task.num_classes, task)
    cfg = _sensitivity_config(args)
    out = Path(args.out)
    sens = analyze_sensitivity(model, task.example_inputs(), _evaluate_torch(task, cfg.eval_images), out, cfg,
                               metric_name=task.metric)
    from . import distributed

    if not distributed.is_main():  # under torchrun the ranks shared the groups; rank 0 has written the JSON
        return
    png = plot_sensitivity(sens, out.with_suffix(".png"))
    print(f"wrote {out} and {png}: {len(sens['layers'])} prunable groups, {sens['evaluations']} evaluations on "
          f"{cfg.eval_images} images (the reference's 9 per layer would be {sens['reference_evaluations']})")


def cmd_prune(args) -> None:
    from .prune import PruneConfig
    from .prune.finetune import prune_and_finetune
    from .prune.sensitivity import finished_analysis
    from .runtime import TorchPredictor
    from .storage import read_json, write_json
    from .training import TrainConfig

    task = _task(args)
    model = _model(args, task.num_classes, task)
    out = Path(args.out)
    sens_path = Path(args.sensitivity) if args.sensitivity else out / "sensitivity.json"
    file_cfg = None
    if not args.uniform and args.sensitivity and sens_path.is_file():
        file_cfg = finished_analysis(sens_path, model)["config"]
    pcfg = PruneConfig.from_dict({"flops_reduction": args.flops_reduction, "importance": args.importance,
                                  "method": "uniform" if args.uniform else "sensitivity", "round_to": args.round_to,
                                  "sensitivity": _sensitivity_config(args, file_cfg)})
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, amp=args.amp, seed=args.seed,
                       num_workers=args.workers, warmup_epochs=0.1, device=args.device)
    base = read_json(Path(args.checkpoint) / "config.json") if args.checkpoint else {}
    pruned, info = prune_and_finetune(
        model, task, pcfg, tcfg, out, sensitivity_path=sens_path,
        config={"model": base.get("model", args.model), "num_classes": task.num_classes,
                "width_mult": base.get("width_mult", args.width_mult), "image_size": args.image_size,
                "classes": task.classes})
    metrics = task.evaluate(TorchPredictor(pruned), progress=True)
    from . import distributed

    if distributed.is_main():
        write_json(out / "config.json", {**read_json(out / "config.json"), "val_metrics": metrics,
                                         "world_size": distributed.world_size()})
        print(json.dumps({"checkpoint": str(out), **info, **metrics}, indent=2))


def _bench_shape(path: str, size: int, explicit: bool) -> tuple[int, ...]:
    """The input shape to time ``path`` at: batch 1 and ``size`` x ``size`` where the file leaves them open, the
    file's own where it fixes them (``torch.onnx.export``'s default); a fixed size other than an explicit
    ``--input-size`` is an error."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: ONNX file not found")
    try:
        dims = onnx.load(str(p), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    except Exception as e:  # noqa: BLE001 - onnx raises several types for a file that is not ONNX
        raise ConfigError(f"{p}: not a valid ONNX model ({str(e).splitlines()[0][:200]})") from None
    fixed = [d.dim_value if d.dim_value > 0 else None for d in dims]
    if len(fixed) != 4:
        raise ConfigError(f"{p}: the input has {len(fixed)} dimensions; slimzoo bench times image models (N, C, H, W)")
    hw = fixed[2:]
    if explicit and any(v is not None and v != size for v in hw):
        raise ConfigError(f"{p}: the file takes {hw[0]}x{hw[1]} images only (fixed when it was exported); "
                          f"drop --input-size or pass --input-size {hw[0]}")
    return (fixed[0] or 1, fixed[1] or 3, hw[0] or size, hw[1] or size)


def cmd_bench(args) -> None:
    from .bench import benchmark_latency, file_size_mb

    shape = _bench_shape(args.onnx, args.input_size or 224, explicit=args.input_size is not None)
    lat = benchmark_latency(args.onnx, shape, threads=tuple(args.threads),
                            warmup=args.warmup, runs=args.runs, runtime=args.runtime)
    res = {"file": args.onnx, "size_mb": round(file_size_mb(args.onnx), 3), "input_size": shape[-1],
           "runtime": args.runtime, "latency_ms": lat}
    print(json.dumps(res, indent=2))
    if args.json:
        from .storage import write_json

        write_json(args.json, res)


def _pair(item: str, flag: str, example: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"{flag} expects KEY=VALUE (e.g. {example}), got {item!r}")
    k, v = item.split("=", 1)
    return k, v


def cmd_zoo(args) -> None:
    from .zoo import Zoo

    roots = {}
    for item in args.data_root or []:
        if "=" not in item:
            raise ConfigError(f"--data-root expects NAME=PATH (e.g. synth-cls=/data/imagenet), got {item!r}")
        k, v = item.split("=", 1)
        roots[k] = v
    weights = dict(_pair(x, "--weights", "cls-resnet50-none=resnet50.pth") for x in args.weights or [])
    overrides: dict = {}
    for item in args.set or []:
        from .config import safe_yaml

        key, text = _pair(item, "--set", "image_size=224")
        node = overrides
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = safe_yaml(text, f"--set {key}")
    zoo = Zoo(Path(args.out), profile_name=args.profile, recipes_dir=Path(args.recipes), data_roots=roots,
              weights=weights, overrides=overrides)
    zoo.run(args.rows, force=args.force)
    print((Path(args.out) / "ZOO.md").read_text())


def cmd_report(args) -> None:
    from .report import write_report

    print(f"wrote {write_report(args.zoo, args.out)}")


def _data_args(sp, need_data=True):
    sp.add_argument("--data", required=need_data,
                    help="dataset folder: classification (list format or folder per class), "
                    "detection (COCO or VOC) or segmentation (PaddleSeg lists or Cityscapes layout)")
    sp.add_argument("--image-size", type=A.IMAGE_SIZE, default=224, help="train/eval resolution (default 224)")
    sp.add_argument("--batch-size", type=A.BATCH_SIZE, default=64)
    sp.add_argument("--workers", type=A.WORKERS, default=None,
                        help="DataLoader worker processes (default: 0 on machines with 2 or fewer CPUs, "
                             "where loading in the training process is faster, else up to 4)")
    sp.add_argument("--skip-bad-samples", action="store_true",
                    help="skip unreadable images (counted) instead of stopping")
    sp.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where PyTorch trains and "
                    "evaluates (ONNX files run where --runtime says: the CPU unless onnxruntime-cuda/-tensorrt)")
    sp.add_argument("--eval-size", help="segmentation: resize evaluation images to HxW (default: their own "
                    "size); predictions are upsampled to the label's size")


def _model_args(sp):
    sp.add_argument("--checkpoint", help="a checkpoint folder written by `slimzoo train`")
    sp.add_argument("--model", help="a registered model (see `slimzoo list-models`), torchvision:NAME, "
                                     "timm:NAME, or package.module:factory (a callable returning an nn.Module)")
    sp.add_argument("--model-kwargs", help="JSON keyword arguments for the model's factory, e.g. "
                                           "'{\"num_classes\": 10}'")
    sp.add_argument("--weights", help="local state_dict file (.safetensors or torch; loaded weights_only)")
    sp.add_argument("--num-classes", type=A.NUM_CLASSES, default=None)
    sp.add_argument("--width-mult", type=A.WIDTH_MULT, default=1.0)


def _prune_args(sp):
    sp.add_argument("--importance", choices=["l1", "fpgm"], default="l1",
                    help="how filters are ranked: L1 norm (the reference's) or FPGM (geometric median)")
    sp.add_argument("--round-to", type=A.ROUND_TO, default=8,
                    help="keep channel counts a multiple of this, so pruned layers stay fast (default 8)")
    sp.add_argument("--ratios", type=A.FRACTION_OPEN, nargs="+", default=[0.25, 0.5, 0.75],
                    help="pruning ratios each group is evaluated at (loss in between is interpolated)")
    sp.add_argument("--stop-loss", type=A.STOP_LOSS, default=0.2,
                    help="stop a group's sweep once its relative metric loss passes this")
    sp.add_argument("--eval-images", type=A.COUNT, default=500, help="validation images per evaluation")
    sp.add_argument("--ignore", nargs="*", help="layers (module names) never to prune")


def _add_list_models(sub) -> None:
    sp = sub.add_parser("list-models", help="list registered models")
    sp.add_argument("pattern", nargs="?", default="*")
    sp.set_defaults(func=cmd_list_models)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    sp = data.add_parser("synth", help="write a deterministic synthetic dataset in a real format")
    sp.add_argument("--task", choices=["cls", "det", "seg"], default="cls")
    sp.add_argument("--format", choices=["coco", "voc", "paddleseg", "cityscapes"], default=None,
                    help="detection: coco (default) or voc; segmentation: paddleseg (default) or cityscapes")
    sp.add_argument("--seg-size", default="128x256", help="segmentation: image size HxW (default 128x256)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--num-train", type=A.COUNT, default=8000)
    sp.add_argument("--num-val", type=A.COUNT, default=1000)
    sp.add_argument("--size", type=A.SYNTH_SIZE, default=72, help="image side in pixels")
    sp.add_argument("--seed", type=A.SEED, default=0)
    sp.set_defaults(func=cmd_data_synth)


def _add_train(sub) -> None:
    sp = sub.add_parser("train", help="train a registered model; writes model.safetensors + config.json")
    _data_args(sp)
    sp.add_argument("--model", required=True)
    sp.add_argument("--weights", help="initial weights (state_dict file)")
    sp.add_argument("--backbone-weights", help="detector: initialise the backbone from a classifier's state_dict "
                    "file or `slimzoo train` checkpoint folder (same backbone architecture and width)")
    sp.add_argument("--width-mult", type=A.WIDTH_MULT, default=1.0)
    sp.add_argument("--anchors", choices=["coco", "kmeans"], default=None,
                    help="detector: YOLOv3's COCO anchors (the model's default) or nine anchors fitted by k-means to "
                         "the training boxes at --image-size (recorded in the checkpoint)")
    sp.add_argument("--out", required=True, help="checkpoint folder")
    sp.add_argument("--epochs", type=A.EPOCHS, default=10)
    sp.add_argument("--lr", type=A.LR, default=2e-3)
    sp.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    sp.add_argument("--weight-decay", type=A.WEIGHT_DECAY, default=0.05)
    sp.add_argument("--amp", action="store_true", help="bfloat16 autocast (fast on AMX CPUs)")
    sp.add_argument("--seed", type=A.SEED, default=0)
    sp.add_argument("--restart", action="store_true",
                    help="discard a saved training state in --out and start from epoch 1 (by default a run resumes, "
                         "and refuses to when its settings differ from the saved state's)")
    sp.set_defaults(func=cmd_train)


def _add_eval(sub) -> None:
    sp = sub.add_parser("eval", help="Top-1/Top-5 of a checkpoint, a state_dict or an ONNX file")
    _data_args(sp)
    _model_args(sp)
    sp.add_argument("--onnx", help="evaluate this ONNX file in a runtime instead (see --runtime)")
    sp.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                    help="runtime for --onnx; openvino needs the extra (pip install 'slimzoo[openvino]'), "
                         "onnxruntime-cuda / onnxruntime-tensorrt a GPU and onnxruntime-gpu")
    sp.add_argument("--threads", type=A.THREADS, default=2)
    sp.set_defaults(func=cmd_eval)


def _add_export(sub) -> None:
    sp = sub.add_parser("export", help="export to ONNX (opset 17, dynamic batch and size)")
    _model_args(sp)
    sp.add_argument("--image-size", type=A.IMAGE_SIZE, default=224)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_export)


def _add_quant(sub) -> None:
    sp = sub.add_parser("quant", help="INT8 post-training quantization to a QDQ ONNX file")
    _data_args(sp)
    _model_args(sp)
    sp.add_argument("--onnx", help="quantize this FP32 ONNX file instead of a PyTorch model (one image input)")
    sp.add_argument("--out", required=True, help="output .onnx path")
    sp.add_argument("--calibration", choices=["minmax", "percentile", "mse", "entropy", "auto"], default="percentile",
                    help="how activation ranges are chosen (see slimzoo.quant.calibrate); auto: percentile or mse, "
                         "whichever keeps the output closer to FP32 on the calibration images (try it on "
                         "Hardswish/SiLU networks)")
    sp.add_argument("--num-calibration", type=A.COUNT, default=256, help="training images used for calibration")
    sp.add_argument("--bias-correction", nargs="?", const="all", default="depthwise",
                    choices=["all", "depthwise", "none"],
                    help="correct each layer's mean output shift caused by quantization: all layers (the flag "
                         "alone), depthwise convs only (the default), or none")
    sp.add_argument("--adaround", action="store_true",
                    help="learn each weight's rounding (up or down) so layer outputs match FP32 (AdaRound); "
                         "slower: minutes on this CPU")
    sp.add_argument("--adaround-iters", type=A.COUNT, default=300, help="optimisation steps per layer for --adaround")
    sp.add_argument("--keep-fp32", nargs="*",
                    help="layers to leave in float: PyTorch module names (e.g. features.0.0) or ONNX node names")
    sp.add_argument("--target", choices=("onnxruntime", "openvino"), default="onnxruntime",
                    help="runtime the Q/DQ placement is made for (onnxruntime: every conv runs as QLinearConv; "
                         "openvino: Q/DQ only where an integer op reads them, as NNCF places them)")
    sp.add_argument("--stem", choices=("auto", "int8", "float"), default="auto",
                    help="the first conv (3 input channels): auto writes the file both ways, times both at 1 thread "
                         "and keeps the float stem (more accurate: the image is not rounded) unless int8 is at "
                         "least 3%% faster (ONNX Runtime's int8 kernel is slow on 3 channels); int8 or float decide "
                         "without measuring")
    sp.add_argument("--grouped-convs", choices=("auto", "int8", "float"), default="auto",
                    help="grouped convs with several channels per group (ResNeXt, RegNet): auto times each in int8 "
                         "and in float at 1 thread and keeps float where it is at least 10%% faster (ONNX Runtime's "
                         "int8 kernel is slow on narrow groups); int8 or float decide without measuring")
    sp.add_argument("--pad-channels", choices=("auto", "on", "off"), default="auto",
                    help="depthwise convs whose channel count is not a multiple of 16 (ONNX Runtime's int8 kernel "
                         "runs the rest one channel at a time): auto writes the file also with them widened by zero "
                         "channels (exact: same outputs) and keeps it where it is at least 3%% faster at 1 thread; "
                         "on widens without measuring, off never")
    sp.add_argument("--output-convs", choices=("float", "int8"), default="float",
                    help="convs whose output no integer op reads (a detector's prediction convs before its box "
                         "decoding), each under 2%% of the weights: float (default) keeps their outputs unrounded; "
                         "int8 quantizes them too (ONNX Runtime then rounds box offsets, objectness and class scores "
                         "to one uint8 grid)")
    sp.add_argument("--no-check", action="store_true",
                    help="skip counting integer ops and timing the INT8 file against FP32 at one thread")
    sp.add_argument("--no-eval", action="store_true", help="skip evaluating the INT8 file")
    sp.add_argument("--analyze", action="store_true",
                    help="per-layer analysis: SQNR and metric change with only that layer INT8 "
                         "(writes OUT.analysis.json and OUT.analysis.png)")
    sp.add_argument("--max-drop", type=A.MAX_DROP, default=None,
                    help="accuracy-aware: keep the fewest layers in FP32 so the metric drops at most this much")
    sp.add_argument("--analysis-images", type=A.COUNT, default=None,
                    help="validation images used by --analyze/--max-drop (default: all)")
    sp.set_defaults(func=cmd_quant)


def _add_qat(sub) -> None:
    sp = sub.add_parser("qat", help="INT8 by quantization-aware fine-tuning, written as a QDQ ONNX file")
    _data_args(sp)
    _model_args(sp)
    sp.add_argument("--out", required=True, help="output .onnx path")
    sp.add_argument("--epochs", type=A.EPOCHS, default=1)
    sp.add_argument("--max-steps", type=A.COUNT, default=None, help="cap on steps per epoch")
    sp.add_argument("--lr", type=A.LR, default=1e-5)
    sp.add_argument("--freeze-ranges-at", type=A.FRACTION, default=0.0,
                    help="fraction of training after which activation ranges stop following a moving average "
                         "(0: keep the calibrated ranges)")
    sp.add_argument("--learn-ranges", action="store_true",
                    help="learn the activation ranges by gradient descent (LSQ+) instead of keeping them")
    sp.add_argument("--range-lr", type=A.LR, default=1e-3, help="learning rate of the ranges with --learn-ranges")
    sp.add_argument("--keep-fp32", nargs="*", help="layers to leave in float (module or node names)")
    sp.set_defaults(func=cmd_qat)


def _add_sensitivity(sub) -> None:
    sp = sub.add_parser("sensitivity", help="per-layer pruning sensitivity: readable JSON (resumable) + PNG plot")
    _data_args(sp)
    _model_args(sp)
    _prune_args(sp)
    sp.add_argument("--out", required=True, help="output .json path (the plot goes beside it as .png)")
    sp.set_defaults(func=cmd_sensitivity)


def _add_prune(sub) -> None:
    sp = sub.add_parser("prune", help="structured channel pruning to a FLOPs target, then fine-tuning")
    _data_args(sp)
    _model_args(sp)
    _prune_args(sp)
    sp.add_argument("--flops-reduction", type=A.FRACTION_OPEN, required=True, help="fraction of FLOPs to remove, e.g. 0.5")
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--sensitivity", help="sensitivity JSON from `slimzoo sensitivity` (default: measure it into "
                     "OUT/sensitivity.json)")
    how.add_argument("--uniform", action="store_true", help="prune every layer by the same ratio instead")
    sp.add_argument("--out", required=True, help="checkpoint folder for the pruned model (weights + pruning record)")
    sp.add_argument("--epochs", type=A.EPOCHS0, default=3, help="fine-tuning epochs (0: none)")
    sp.add_argument("--lr", type=A.LR, default=1e-3)
    sp.add_argument("--amp", action="store_true", help="bfloat16 autocast (fast on AMX CPUs)")
    sp.add_argument("--seed", type=A.SEED, default=0)
    sp.set_defaults(func=cmd_prune)


def _add_bench(sub) -> None:
    sp = sub.add_parser("bench", help="latency of an ONNX file in ONNX Runtime (CPU or GPU) or OpenVINO")
    sp.add_argument("--onnx", required=True)
    sp.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                    help="openvino needs the extra (pip install 'slimzoo[openvino]'); onnxruntime-cuda and "
                         "onnxruntime-tensorrt a GPU and onnxruntime-gpu (--threads is then ignored)")
    sp.add_argument("--input-size", type=A.IMAGE_SIZE, default=None,
                    help="image side (default 224, or the file's own where it fixes one)")
    sp.add_argument("--threads", type=A.THREADS, nargs="+", default=[1, 2, 4])
    sp.add_argument("--warmup", type=A.COUNT0, default=5)
    sp.add_argument("--runs", type=A.COUNT, default=30)
    sp.add_argument("--json", help="also write the result to this JSON file")
    sp.set_defaults(func=cmd_bench)


def _add_report(sub) -> None:
    sp = sub.add_parser("report", help="render a zoo's results.json into a self-contained report.html")
    sp.add_argument("--zoo", default="runs/zoo", help="zoo folder (with results.json)")
    sp.add_argument("--out", help="output file (default ZOO/report.html)")
    sp.set_defaults(func=cmd_report)


def _add_zoo(sub) -> None:
    from .zoo.recipes import RECIPES_DIR

    sp = sub.add_parser("zoo", help="run zoo rows into OUT/results.json, OUT/ZOO.md and OUT/report.html "
                        "(resumable)")
    sp.add_argument("--out", default="runs/zoo")
    sp.add_argument("--rows", nargs="*", help="row ids (default: all)")
    sp.add_argument("--profile", default="default", help="default | smoke | full")
    sp.add_argument("--recipes", default=str(RECIPES_DIR))
    sp.add_argument("--data-root", action="append", metavar="NAME=PATH",
                    help="use your own dataset for a recipe dataset name (e.g. synth-cls=/data/imagenet)")
    sp.add_argument("--weights", action="append", metavar="ROW=PATH",
                    help="your own trained FP32 weights for an FP32 row instead of training it (a state_dict file "
                    "or a `slimzoo train` folder), e.g. cls-resnet50-none=resnet50-11ad3fa6.pth")
    sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a recipe setting in every row, e.g. image_size=224 or "
                    "quant.num_calibration=512 (values parsed as YAML)")
    sp.add_argument("--force", action="store_true", help="recompute the selected rows")
    sp.set_defaults(func=cmd_zoo)


def build_parser() -> argparse.ArgumentParser:
    p = A.Parser(prog="slimzoo", description="Compress PyTorch vision models (INT8 quantization, "
                                "structured pruning) and measure accuracy, size and latency.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_list_models(sub)
    _add_data(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_quant(sub)
    _add_qat(sub)
    _add_sensitivity(sub)
    _add_prune(sub)
    _add_bench(sub)
    _add_report(sub)
    _add_zoo(sub)
    return p


def _after_interrupt(args) -> str:
    """What an interrupted command left, truthfully per command."""
    if args.command == "data":
        return "the dataset is incomplete: rerun the same command to write it again from the start"
    if args.command in ("train", "prune", "zoo", "sensitivity"):
        return "finished epochs, evaluations and rows are kept: rerun the same command to resume"
    return "nothing was written (outputs are written whole or not at all): rerun the command"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    joined = False
    if args.command in ("train", "eval", "sensitivity", "prune", "qat"):  # under torchrun: join the group
        from . import distributed

        joined = distributed.init()
    code = _run(args)
    if joined:  # a torchrun rank: no interpreter teardown (see distributed.exit_rank)
        distributed.exit_rank(code)
    return code


def _run(args) -> int:
    """The command, its errors as one line each, and its exit code."""
    try:
        args.func(args)
        from . import distributed

        distributed.shutdown()
    except SlimzooError as e:
        print(f"slimzoo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"slimzoo: interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
