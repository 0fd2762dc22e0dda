"""Data-parallel training across processes (``torchrun``): gloo on CPU, nccl on GPU.

Under ``torchrun --nproc_per_node N slimzoo ...`` every process reads its rank from the
environment; :func:`init` joins the process group once. Training then wraps the model in
DistributedDataParallel, each rank reads its own shard of the training set (a seeded
DistributedSampler, reshuffled per epoch), evaluation splits the validation set without
padding and reduces its counts, and only rank 0 writes files. Without torchrun all of this is
a no-op and a single process runs as before.
"""
from __future__ import annotations

import faulthandler
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def init() -> bool:
    """Join the process group if launched by torchrun (``WORLD_SIZE`` > 1); True when distributed."""
    if dist.is_available() and dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("SLIMZOO_DIST_BACKEND") != "gloo" else "gloo"
    # a rank that aborts in native code (SIGABRT, SIGSEGV) prints every thread's Python stack, so that the phase it
    # died in is known rather than only torchrun's "Signal 6 received"
    faulthandler.enable(all_threads=True)
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    """Leave the process group (all ranks together), so that no rank exits while another still talks to it."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_rank(code: int) -> None:
    """End a torchrun rank whose work is done (or failed with a message already printed), without interpreter
    finalization.

    Rarely (once in CI, once before on a 2-core machine beside a busy pytest worker; never in 36 runs of the
    failing command here) a torchrun rank aborted with "terminate called without an active exception", the
    message of a native thread still running while its owner is destroyed; interpreter teardown is where such threads meet their owners' destructors (gloo's and ONNX
    Runtime's pools, and after an error a process group never left). Once the group is left and the files are
    written, or the error is printed, nothing remains to do: the rank flushes its streams and leaves with its exit
    code, and torchrun ends the other ranks when it is not 0. Should a rank abort earlier, :func:`init`'s
    faulthandler prints where.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


_LOCAL = False


class local:
    """Within this block the process acts alone: loaders do not shard and metrics are not reduced
    (for work that differs per rank, such as evaluating different pruned models)."""

    def __enter__(self):
        global _LOCAL
        self._prev, _LOCAL = _LOCAL, True

    def __exit__(self, *exc):
        global _LOCAL
        _LOCAL = self._prev


def _group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def active() -> bool:
    """True when this process is one of several ranks and not inside a :class:`local` block."""
    return _group() and not _LOCAL


def rank() -> int:
    return dist.get_rank() if _group() else 0


def world_size() -> int:
    return dist.get_world_size() if _group() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _group():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (``t`` itself when not distributed)."""
    if active():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_list(items: list) -> list:
    """The concatenation of every rank's ``items`` (picklable Python objects), in rank order."""
    if not _group():
        return items
    out: list[list] = [None] * world_size()  # type: ignore[list-item]
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]


class ShardSampler(Sampler):
    """Indices ``rank, rank + W, ...`` of a dataset: every sample on exactly one rank, no padding (for evaluation)."""

    def __init__(self, n: int):
        self.n, self.r, self.w = n, rank(), world_size()

    def __iter__(self):
        return iter(range(self.r, self.n, self.w))

    def __len__(self) -> int:
        return len(range(self.r, self.n, self.w))
