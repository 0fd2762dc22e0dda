"""Measure what a deployable model costs: latency in ONNX Runtime or OpenVINO, FLOPs, parameters, file size."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def file_size_mb(path: str | Path) -> float:
    """Storage size of a file in MB (10^6 bytes, as model zoos report)."""
    return os.path.getsize(path) / 1e6


def count_flops_params(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, int]:
    """(FLOPs, parameters) of one forward pass; FLOPs count multiply-accumulates, as torchvision and PaddleSlim do."""
    import torch_pruning as tp

    was_training = model.training
    macs, params = tp.utils.count_ops_and_params(model.eval(), example_inputs)
    model.train(was_training)
    return int(macs), int(params)


def _runner(path, runtime: str, threads: int, x: np.ndarray):
    """A zero-argument callable running the model once on ``x`` in ``runtime``."""
    if runtime == "openvino":
        from .runtime import openvino_compiled

        request = openvino_compiled(path, threads).create_infer_request()
        return lambda: request.infer([x])
    from .runtime import ort_session

    sess = ort_session(path, threads=threads, runtime=runtime)  # GPU providers: the timed call includes copies
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)


def benchmark_latency(path: str | Path, input_shape: tuple[int, ...], *, threads=(1, 2, 4), warmup: int = 5,
                      runs: int = 30, seed: int = 0, runtime: str = "onnxruntime", min_runs: int | None = None,
                      max_seconds: float | None = None) -> dict[str, dict[str, float]]:
    """Latency (ms) of one inference call on a fixed input, per thread count, in ``runtime``.

    The timed region is the runtime call alone (ONNX Runtime ``session.run`` or OpenVINO
    ``infer``; no pre/post-processing). Returns ``{"1": {"median": .., "p90": .., "runs": n}, ...}``.
    With ``max_seconds``, timing at one thread count stops once that much time is spent and at least
    ``min_runs`` (default: all ``runs``) calls were timed; warm-up stops after ``max_seconds / 5``
    (at least one call), so slow models do not spend minutes on a median that has settled.
    """
    x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
    min_runs = runs if min_runs is None else min(min_runs, runs)
    out = {}
    for t in threads:
        run = _runner(path, runtime, t, x)
        start = time.perf_counter()
        for _ in range(warmup):
            run()
            if max_seconds is not None and time.perf_counter() - start > max_seconds / 5:
                break
        times = []
        start = time.perf_counter()
        for i in range(runs):
            if max_seconds is not None and i >= min_runs and time.perf_counter() - start > max_seconds:
                break
            t0 = time.perf_counter()
            run()
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        out[str(t)] = {"median": round(statistics.median(times), 3),
                       "p90": round(times[min(len(times) - 1, int(0.9 * len(times)))], 3), "runs": len(times)}
        del run
    return out
