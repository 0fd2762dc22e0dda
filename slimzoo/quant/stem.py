"""The first convolution in int8 or in float, decided by measuring both files (``PTQConfig.stem``).

ONNX Runtime's ``QLinearConv`` is slow on 3 input channels: on a small stem (MobileNetV3-Small's 3x3, 16 output
channels) the integer kernel takes twice the float one, and the file loses what int8 wins elsewhere. On a heavy
stem (ResNet's 7x7, 64 channels) the two come out within a few percent. No rule on the shape separates them on
every CPU, so with ``stem="auto"`` the file is written both ways and timed at one thread; the float stem, which
spares the image its rounding to uint8, is kept unless the int8 one is clearly faster (docs/quantization.md).
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np

STEMS = ("auto", "int8", "float")
MIN_GAIN = 0.03  # the int8 stem must be at least this much faster to be kept over the more accurate float one


WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def stem_layers(model, max_channels: int = 4) -> list[str]:
    """Names of the convs that read the graph's image input, directly or through ops without weights (a ``Pad``
    for TF-style "SAME" padding, an in-graph normalization), and have at most ``max_channels`` input channels
    (the stem of an image network)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    reached = {i.name for i in g.input} - set(inits)  # the image, and tensors computed from it without weights
    out = []
    for n in g.node:  # ONNX graphs are topologically sorted; an op's data is its first input
        if not n.input or n.input[0] not in reached:
            continue
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits:
            dims = list(inits[n.input[1]].dims)
            if len(dims) == 4 and dims[1] <= max_channels:
                out.append(n.name)
        elif n.op_type not in (*WEIGHTED, "Shape", "Size"):  # a shape is not image data
            reached.update(n.output)
    return out


def time_files(paths: list[Path], shape: tuple[int, ...], rounds: int = 6, calls: int = 10,
               budget_s: float = 6.0) -> list[float]:
    """Median latency (ms) of each file at one thread in ONNX Runtime, the files timed in turns (round after
    round) so that load on the machine falls on all alike; the least of the round medians is kept."""
    from ..runtime import timing_runner

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    runners = []
    for p in paths:
        run = timing_runner(p, x)
        for _ in range(3):
            run()
        runners.append(run)
    best = [float("inf")] * len(paths)
    start = time.perf_counter()
    for r in range(rounds):
        for i, run in enumerate(runners):
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                run()
                ts.append(time.perf_counter() - t0)
            best[i] = min(best[i], statistics.median(ts) * 1e3)
        if r >= 1 and time.perf_counter() - start > budget_s:
            break
    return [round(b, 3) for b in best]


def choose_stem(int8_path: Path, float_stem_path: Path, stems: list[str], shape: tuple[int, ...]) -> dict:
    """Keep the float stem unless the int8 one is at least ``MIN_GAIN`` faster at one thread: the float stem
    reads the image unquantized, the int8 one adds the input's rounding, the largest single activation error on
    EfficientNet-Lite0 (docs/quantization.md). ``float_stem_path`` replaces ``int8_path`` if it is kept, and is
    removed either way. Returns the decision and its figures (for the check report)."""
    int8_ms, float_ms = time_files([int8_path, float_stem_path], shape)
    chosen = "int8" if int8_ms < float_ms * (1 - MIN_GAIN) else "float"
    if chosen == "float":
        os.replace(float_stem_path, int8_path)
    else:
        Path(float_stem_path).unlink(missing_ok=True)
    return {"layers": stems, "chosen": chosen, "int8_stem_ms": int8_ms, "float_stem_ms": float_ms}
