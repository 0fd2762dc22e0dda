"""Atomic file writes and checkpoint I/O (safetensors state_dicts, never pickled modules)."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CheckpointError, OutputError, SlimzooError


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path`` so readers never see a partial file."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file path (or another name) for this output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write here ({e.strerror or e}); choose a folder you can write to") from None
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, SlimzooError) or not isinstance(e, Exception):
            raise
        raise _output_error(path, e) from e
    return path


def _output_error(path: Path, e: Exception) -> Exception:
    """An OSError, or a writer's own error (torch, safetensors, onnx) on a full disk, as one clear OutputError;
    other errors unchanged."""
    import shutil

    try:
        free_mb = shutil.disk_usage(path.parent).free / 2**20
    except OSError:
        free_mb = None
    if free_mb is not None and free_mb < 64:
        return OutputError(f"{path}: cannot write: the disk is full ({free_mb:.0f} MB free); free some space or "
                           "choose another output folder")
    if isinstance(e, OSError):
        return OutputError(f"{path}: cannot write ({e.strerror or e})")
    return e


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file."""
    def _w(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return atomic_write(path, _w)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error if it is malformed."""
    from .config import safe_json

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    return safe_json(text, str(path), CheckpointError)


def save_state_dict(model_or_sd, path: str | os.PathLike) -> Path:
    """Save a model's state_dict as safetensors, atomically."""
    from safetensors.torch import save_file

    sd = model_or_sd.state_dict() if hasattr(model_or_sd, "state_dict") else model_or_sd
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    return atomic_write(path, lambda tmp: save_file(sd, tmp))


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Load a state_dict from safetensors or a torch file (``weights_only=True``: no pickled code runs)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own types
            raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: refused to load: not a plain tensor state_dict "
            f"(loaded with weights_only=True; pickled code is never run): {str(e).splitlines()[0]}"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors), got {type(obj).__name__}")
    return obj


def load_weights(model, path: str | os.PathLike, *, strict: bool = True):
    """Load a state_dict file into ``model``, explaining shape or key mismatches."""
    import torch

    sd = load_state_dict_file(path)
    bad_values = [k for k, v in sd.items() if torch.is_tensor(v) and v.is_floating_point() and not bool(
        torch.isfinite(v).all())]
    if bad_values:
        raise CheckpointError(f"{path}: {len(bad_values)} tensor(s) hold NaN or Inf values, e.g. {bad_values[:3]}; "
                              "the weights are broken (diverged training?): results from them would be meaningless")
    own = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} tensor(s) do not match the model's shapes, e.g. " + "; ".join(bad[:3])
            + ". Check --model, --num-classes and --width-mult.")
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{path}: keys do not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    model.load_state_dict(sd, strict=strict)
    return model
