"""A trained model on disk: ``model.safetensors`` (plain state_dict) + ``config.json`` (how to rebuild it: the
registered model's name, ``num_classes``, ``width_mult`` and any other factory arguments as ``model_kwargs``, e.g. a
detector's fitted anchors).

A pruned model's ``config.json`` carries its pruning record (``"pruning"``): loading builds the
registered model, replays the record, then loads the weights; no pickle anywhere.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import CheckpointError, ConfigError
from .storage import load_weights, read_json, save_state_dict, write_json


def save_checkpoint(model: nn.Module, out_dir: str | Path, config: dict) -> Path:
    """Write weights then config (config last: its presence marks a complete checkpoint)."""
    out_dir = Path(out_dir)
    save_state_dict(model, out_dir / "model.safetensors")
    write_json(out_dir / "config.json", config)
    return out_dir


def _check_config(cfg, cfg_path: Path) -> None:
    """Types and sizes of the fields that build the model, before anything is allocated."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    for key in ("model", "num_classes"):
        if key not in cfg:
            raise CheckpointError(f"{cfg_path}: missing key {key!r}")
    if not isinstance(cfg["model"], str) or not cfg["model"]:
        raise CheckpointError(f"{cfg_path}: 'model' must be a model name, got {cfg['model']!r}")
    n = cfg["num_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000:
        raise CheckpointError(f"{cfg_path}: 'num_classes' must be an integer in [1, 100000], got {n!r}")
    wm = cfg.get("width_mult", 1.0)
    if isinstance(wm, bool) or not isinstance(wm, (int, float)) or not 0 < wm <= 8:
        raise CheckpointError(f"{cfg_path}: 'width_mult' must be a number in (0, 8], got {wm!r}")
    classes = cfg.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{cfg_path}: 'classes' must be a list of class names")
    kw = cfg.get("model_kwargs", {})
    if not isinstance(kw, dict) or {"num_classes", "width_mult", "weights"} & set(kw):
        raise CheckpointError(f"{cfg_path}: 'model_kwargs' must be an object of the model factory's other keyword "
                              f"arguments (e.g. a detector's anchors), got {kw!r}")
    if cfg.get("pruning") is not None and not isinstance(cfg["pruning"], (dict, list)):
        raise CheckpointError(f"{cfg_path}: 'pruning' must be a pruning record (an object)")


def check_classes(cfg: dict, task, where: str) -> None:
    """Refuse a checkpoint trained on classes other than the dataset's (other names, count or order): its scores
    would be computed against the wrong labels."""
    saved = cfg.get("classes")
    have = list(getattr(task, "classes", None) or [])
    if not saved or not have or list(saved) == have:
        return
    if len(saved) != len(have):
        what = f"{len(saved)} classes vs the dataset's {len(have)}"
    elif sorted(saved) == sorted(have):
        i = next(i for i, (a, b) in enumerate(zip(saved, have, strict=True)) if a != b)
        what = f"the same classes in another order (class {i} is {saved[i]!r} there, {have[i]!r} in the dataset)"
    else:
        what = f"other classes (e.g. {sorted(set(saved) - set(have))[:3]} not in the dataset)"
    raise ConfigError(f"{where}: trained on {what} at {task.data_root}; evaluate or fine-tune it on data with the "
                      "classes it was trained on (labels.txt in the same order)")


def load_checkpoint(ckpt_dir: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the registered model named in ``config.json`` (pruned if it records a pruning) and load its weights."""
    from .models import create_model

    ckpt_dir = Path(ckpt_dir)
    cfg_path = ckpt_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{ckpt_dir}: not a slimzoo checkpoint (no config.json); "
                              "use --model NAME --weights FILE for a bare state_dict")
    cfg = read_json(cfg_path)
    _check_config(cfg, cfg_path)
    try:
        model = create_model(cfg["model"], num_classes=cfg["num_classes"], width_mult=cfg.get("width_mult", 1.0),
                             **cfg.get("model_kwargs", {}))
    except TypeError as e:  # a keyword the factory does not take
        raise CheckpointError(f"{cfg_path}: 'model_kwargs' do not fit model {cfg['model']!r}: {e}") from None
    if cfg.get("pruning"):
        from .prune import replay

        replay(model, cfg["pruning"], source=f"{cfg_path} (pruning)")
    load_weights(model, ckpt_dir / "model.safetensors")
    return model.eval(), cfg
