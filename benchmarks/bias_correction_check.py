"""Why does bias correction hurt a model? Per-channel mean shift of every quantized activation against FP32,
with and without bias correction, and the biggest bias changes; then, for one layer, where its input's
quantization error comes from (weight rounding or the activation range) and how its input's per-batch
percentiles spread.

    python benchmarks/bias_correction_check.py --zoo runs/zoo --model resnet50 --layer /conv3_15/Conv

Settings as the zoo's PTQ: percentile calibration on 256 training images; mean shifts measured on the first
--val-images validation images with ONNX Runtime (the INT8 files' dequantized tensors against the FP32 file's).
"""
import argparse
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from slimzoo.export import export_onnx, fold_batchnorm
from slimzoo.quant.bias_correction import _fake_quant
from slimzoo.quant.calibrate import iterate_tensors, percentile_pair
from slimzoo.quant.ptq import PTQConfig, quantize_onnx
from slimzoo.zoo import Zoo


def channel_means(model, tensors: list[str], batches, suffix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for t, v in iterate_tensors(model, [a + suffix for a in tensors], batches):
        out.setdefault(t[: len(t) - len(suffix)] if suffix else t, []).append(
            v.mean(axis=(0, 2, 3) if v.ndim == 4 else (0,)))
    return {t: np.mean(v, axis=0) for t, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--layer", default="/conv3_15/Conv", help="ONNX node name of the layer to take apart")
    ap.add_argument("--val-images", type=int, default=128)
    ap.add_argument("--out", default="/tmp")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, task = Zoo(Path(args.zoo)).baseline(f"cls-{args.model}-none")
    fp32 = export_onnx(fold_batchnorm(model), Path(args.out) / f"{args.model}_folded.onnx", task.example_inputs())
    calib = [b.numpy() for b in task.calibration_batches(256, 32)]
    val = [b.numpy() for b, _ in task.val_loader(args.val_images)]
    fm = onnx.load(str(fp32))
    files = {bc: quantize_onnx(fp32, Path(args.out) / f"{args.model}_bc{int(bc)}.onnx", calib,
                               PTQConfig(bias_correction=bc)) for bc in (False, True)}
    _, qp, plan = files[False]
    acts = [a for a in plan.activations if a not in {i.name for i in fm.graph.input}]
    ref = channel_means(fm, acts, val)
    for bc, (path, _, _) in files.items():
        got = channel_means(onnx.load(str(path)), acts, val, "_dequantized")
        rel = [float(np.abs(got[t] - ref[t]).mean() / (np.abs(ref[t]).mean() + 1e-9)) for t in acts]
        print(f"bias correction {bc}: relative mean shift, mean {np.mean(rel):.4f}; last three "
              f"{[round(r, 4) for r in rel[-3:]]}")
    inits = {i.name: numpy_helper.to_array(i) for i in fm.graph.initializer}
    qbc = files[True][1]
    change = {n: float(np.abs(qbc.biases[n] - inits[plan.biases[n][0]]).mean()
                       / (np.abs(inits[plan.biases[n][0]]).mean() + 1e-9)) for n in qbc.biases}
    print("largest relative bias changes:", sorted(change.items(), key=lambda kv: -kv[1])[:5])

    _, x, w = plan.biases[args.layer]
    aq = qp.activations[plan.shared.get(x, x)]
    xs = [torch.from_numpy(v) for _, v in iterate_tensors(fm, [x], calib)]
    X = torch.cat(xs)
    hi = aq.scale * (255 - aq.zero_point)
    print(f"{args.layer} input {x}: range [.., {hi:.2f}], max {X.max().item():.2f}, "
          f"{100 * (X > hi).float().mean().item():.2f}% of values clipped")
    print("per-batch 99.99th percentiles:", [round(percentile_pair(v.numpy(), 99.99)[1], 2) for v in xs])
    if X.ndim == 4:
        W, Wq = torch.from_numpy(inits[w].copy()), torch.from_numpy(qp.weights[w].dequantize())
        y = F.conv2d(X, W)
        for what, yq in (("weights", F.conv2d(X, Wq)), ("activation", F.conv2d(_fake_quant(X, aq), W))):
            print(f"mean |channel mean shift| from the {what}: {(y - yq).mean(dim=(0, 2, 3)).abs().mean():.4f} "
                  f"(mean |output| {y.abs().mean():.4f})")


if __name__ == "__main__":
    main()
