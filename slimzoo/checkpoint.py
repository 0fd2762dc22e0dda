"""A trained model on disk: ``model.safetensors`` (plain state_dict) + ``config.json`` (how to rebuild it).

A pruned model's ``config.json`` carries its pruning record (``"pruning"``): loading builds the
registered model, replays the record, then loads the weights; no pickle anywhere.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import CheckpointError
from .storage import load_weights, read_json, save_state_dict, write_json


def save_checkpoint(model: nn.Module, out_dir: str | Path, config: dict) -> Path:
    """Write weights then config (config last: its presence marks a complete checkpoint)."""
    out_dir = Path(out_dir)
    save_state_dict(model, out_dir / "model.safetensors")
    write_json(out_dir / "config.json", config)
    return out_dir


def load_checkpoint(ckpt_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the registered model named in ``config.json`` (pruned if it records a pruning) and load its weights."""
    from .models import create_model

    ckpt_dir = Path(ckpt_dir)
    cfg_path = ckpt_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{ckpt_dir}: not a slimzoo checkpoint (no config.json); "
                              "use --model NAME --weights FILE for a bare state_dict")
    cfg = read_json(cfg_path)
    for key in ("model", "num_classes"):
        if key not in cfg:
            raise CheckpointError(f"{cfg_path}: missing key {key!r}")
    model = create_model(cfg["model"], num_classes=cfg["num_classes"], width_mult=cfg.get("width_mult", 1.0))
    if cfg.get("pruning"):
        from .prune import replay

        replay(model, cfg["pruning"], source=f"{cfg_path} (pruning)")
    load_weights(model, ckpt_dir / "model.safetensors")
    return model.eval(), cfg
