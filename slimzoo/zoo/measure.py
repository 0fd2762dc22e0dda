"""What the runner measures besides the metric: latency of a file in the runtimes, the machine, peak memory; and
the synthetic datasets it writes on first use."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from ..errors import ConfigError


def machine_info() -> dict:
    """CPU model, core count and library versions, for the record."""
    import os

    import onnxruntime
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "onnxruntime": onnxruntime.__version__,
            "date": time.strftime("%Y-%m-%d")}


def benchmark_file(path: Path, bench_size: int, bench: dict) -> tuple[dict, dict]:
    """ONNX Runtime latency per thread count (``bench``: the profile's timing settings), and OpenVINO's and the
    GPU providers' where installed."""
    from ..bench import benchmark_latency
    from ..runtime import available_runtimes

    timing = {"warmup": bench.get("warmup", 5), "runs": bench.get("runs", 30),
              "min_runs": bench.get("min_runs", 10), "max_seconds": bench.get("max_seconds")}
    shape = (1, 3, bench_size, bench_size)
    lat = benchmark_latency(path, shape, threads=tuple(bench.get("threads", (1, 2, 4))), **timing)
    extra = {}
    if "openvino" in bench.get("runtimes", ["onnxruntime", "openvino"]) and "openvino" in available_runtimes():
        ov = benchmark_latency(path, shape, threads=tuple(bench.get("openvino_threads", (1, 2))),
                               runtime="openvino", **timing)
        extra["latency_ms_openvino"] = {k: v["median"] for k, v in ov.items()}
    gpu = [rt for rt in ("onnxruntime-cuda", "onnxruntime-tensorrt") if rt in available_runtimes()]
    if gpu:  # batch 1 on the GPU, input copied in and out in the timed call
        extra["latency_ms_gpu"] = {rt: benchmark_latency(path, shape, threads=(1,), runtime=rt, **timing)["1"]
                                   ["median"] for rt in gpu}
    return lat, extra


def synthesize(name: str, root: Path, spec: dict, progress: bool) -> Path:
    if name.startswith("synth-cls"):
        from ..data.synth_cls import write_synth_cls as write
    elif name.startswith("synth-det"):
        from ..data.synth_det import write_synth_det as write
    elif name.startswith("synth-seg"):
        from ..data.synth_seg import write_synth_seg as write
    else:
        raise ConfigError(f"no generator for dataset {name!r}")
    write(root, progress=progress, **spec)
    return root


def reset_peak_rss() -> None:
    """Reset this process's peak resident memory (Linux: ``clear_refs`` 5), so each row reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (MB) since the last reset; data-loader workers not included."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    except (ImportError, OSError):
        return None
