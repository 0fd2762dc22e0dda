"""Model registry: one name per variant, keyword-only builders (in the spirit of timm)."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable

from torch import nn

from ..errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}


def register_model(task: str) -> Callable:
    """Register a builder ``fn(*, num_classes, width_mult=1.0, **kw)`` under its function name."""
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[fn.__name__] = fn
        _TASKS[fn.__name__] = task
        return fn
    return deco


def list_models(pattern: str = "*", *, task: str | None = None) -> list[str]:
    """Names of registered models matching a glob ``pattern`` (and ``task`` if given)."""
    return sorted(n for n in _MODELS
                  if fnmatch.fnmatch(n, pattern) and (task is None or _TASKS[n] == task))


def model_task(name: str) -> str:
    """The task (classification, detection, segmentation) a registered model serves."""
    _check(name)
    return _TASKS[name]


def _check(name: str) -> None:
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}; or give "
                          "torchvision:NAME, timm:NAME or package.module:factory")


def resolve_factory(spec: str):
    """The callable that builds ``spec``: ``torchvision:NAME``, ``timm:NAME`` or ``package.module:factory``."""
    import importlib

    source, _, name = spec.partition(":")
    if not name or not source:
        raise ConfigError(f"model {spec!r}: expected a registered name, torchvision:NAME, timm:NAME or "
                          "package.module:factory")
    if source == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model_builder(name)
        except ValueError:
            raise ConfigError(f"torchvision has no model {name!r}; see torchvision.models.list_models()") from None
    if source == "timm":
        try:
            import timm
        except ImportError:
            raise ConfigError("timm:NAME needs timm: pip install 'slimzoo[timm]'") from None
        if name not in timm.list_models():
            raise ConfigError(f"timm has no model {name!r}; see timm.list_models()")
        return lambda **kw: timm.create_model(name, pretrained=False, **kw)
    try:
        module = importlib.import_module(source)
    except ImportError as e:
        raise ConfigError(f"model {spec!r}: cannot import {source!r} ({e})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ConfigError(f"model {spec!r}: {source} has no callable {name!r}")
    return factory


def create_model(name: str, *, num_classes: int | None = None, width_mult: float = 1.0,
                 weights: str | None = None, **kwargs) -> nn.Module:
    """Build a model: a registered name, or ``torchvision:NAME``, ``timm:NAME`` (``num_classes`` passed on) or
    ``package.module:factory`` (called with ``kwargs`` only); ``weights`` is an optional local state_dict file
    (safetensors or a ``weights_only`` torch file) to load. Nothing is downloaded."""
    if ":" in name and name not in _MODELS:
        factory = resolve_factory(name)
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        elif name.startswith(("torchvision:", "timm:")):
            kwargs["num_classes"] = 1000
        try:
            model = factory(**kwargs)
        except TypeError as e:
            raise ConfigError(f"model {name!r} does not take these arguments ({e}); pass the ones its factory "
                              "takes with --model-kwargs") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {name!r}: the factory returned {type(model).__name__}, not a torch nn.Module")
        if weights:
            from ..storage import load_weights

            load_weights(model, weights)
        return model
    _check(name)
    num_classes = 1000 if num_classes is None else num_classes
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if not 0 < width_mult <= 4:
        raise ConfigError(f"width_mult must be in (0, 4], got {width_mult}")
    model = _MODELS[name](num_classes=num_classes, width_mult=width_mult, **kwargs)
    if weights:
        from ..storage import load_weights

        load_weights(model, weights)
    return model


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` (never below 90% of ``v``), as MobileNet does."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def load_backbone(model: nn.Module, state_dict: dict) -> int:
    """Copy a classifier's weights into ``model.backbone`` wherever names and shapes match; returns the count.

    Detectors and segmenters build their backbones from the classification registry with the
    same module names, so an ImageNet (or zoo) classification checkpoint initialises them.
    """
    target = model.backbone.state_dict()
    matched = {k: v for k, v in state_dict.items() if k in target and target[k].shape == v.shape}
    if not matched:
        raise ConfigError(f"no tensor of the given state_dict fits {type(model.backbone).__name__}: "
                          "is it a checkpoint of the same backbone architecture and width?")
    model.backbone.load_state_dict(matched, strict=False)
    return len(matched)
