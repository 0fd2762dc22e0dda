"""Prune, fine-tune with the task's own loop, and save a checkpoint with its pruning record (CLI and zoo)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import PruneConfig, plot_sensitivity, prune


def prune_and_finetune(model: nn.Module, task, pcfg: PruneConfig, tcfg, out_dir: str | Path, *,
                       sensitivity_path: str | Path, config: dict, state_name: str = "finetune_state.pt",
                       progress: bool = True, log_prefix: str = "") -> tuple[nn.Module, dict]:
    """Prune ``model`` to ``pcfg``, fine-tune it for ``tcfg`` (resumable per epoch), save it to ``out_dir``.

    The checkpoint's ``config.json`` is ``config`` plus the fine-tuning settings, a pruning summary
    (``prune_info``) and the replayable ``pruning`` record. Returns (model, prune_info).
    """
    from .. import distributed
    from ..checkpoint import save_checkpoint
    from ..runtime import TorchPredictor
    from ..storage import read_json
    from ..training import fit

    out_dir, sensitivity_path = Path(out_dir), Path(sensitivity_path)
    limit = pcfg.sensitivity.eval_images
    pruned, rec, info = prune(model, task.example_inputs(), pcfg, sensitivity_path=sensitivity_path,
                              evaluate=lambda m: task.evaluate(TorchPredictor(m), limit=limit)[task.metric],
                              metric_name=task.metric, progress=progress)
    if pcfg.method == "sensitivity":
        if distributed.is_main():
            plot_sensitivity(read_json(sensitivity_path), sensitivity_path.with_suffix(".png"))
        info["sensitivity_file"] = str(sensitivity_path)
    info["metric_before_finetune"] = round(task.evaluate(TorchPredictor(pruned))[task.metric], 3)
    for name, why in info.get("left_unpruned", {}).items():
        print(f"{log_prefix}left unpruned: {name}: {why}", flush=True)
    if "target_missed_by" in info:
        print(f"{log_prefix}warning: FLOPs target -{pcfg.flops_reduction:.1%} missed by "
              f"{info['target_missed_by']:+.1%} (channel granularity)", flush=True)
    print(f"{log_prefix}FLOPs -{info['flops_reduction']:.1%}, params -{info['params_reduction']:.1%}; "
          f"{task.metric} before fine-tuning {info['metric_before_finetune']:.2f}; "
          f"fine-tuning {tcfg.epochs} epoch(s)", flush=True)
    state = out_dir / state_name
    if tcfg.epochs:
        torch.manual_seed(tcfg.seed)
        pruned = fit(pruned, task.train_loader(tcfg.batch_size), task.loss_fn, tcfg, state_path=state,
                     progress=progress)
    if distributed.is_main():  # under torchrun every rank prunes the same way and fine-tunes together; rank 0 writes
        save_checkpoint(pruned, out_dir, {**config, "finetune": tcfg.to_dict(), "prune_info": info,
                                          "pruning": rec.to_dict()})
        state.unlink(missing_ok=True)
    distributed.barrier()
    return pruned.eval(), info
