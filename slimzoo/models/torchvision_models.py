"""MobileNetV2 and ResNets from torchvision, so torchvision ImageNet state_dicts load unchanged."""
from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.models import resnet as tvr

from ._registry import make_divisible, register_model


@register_model("classification")
def mobilenet_v2(*, num_classes: int = 1000, width_mult: float = 1.0, **kw) -> nn.Module:
    """torchvision MobileNetV2: 3,504,872 parameters at 1000 classes, width 1.0."""
    return tv_mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult, **kw)


class ResNet(tvr.ResNet):
    """torchvision's ResNet with every stage's width scaled by ``width_mult`` (module names unchanged)."""

    def __init__(self, block, layers, num_classes: int = 1000, width_mult: float = 1.0, **kw):
        self._width_mult = width_mult
        super().__init__(block, layers, num_classes=num_classes, **kw)
        if width_mult != 1.0:  # the stem keeps 64 channels; the classifier follows the last stage
            self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        return super()._make_layer(block, make_divisible(planes * self._width_mult), blocks, stride, dilate)


@register_model("classification")
def resnet34(*, num_classes: int = 1000, width_mult: float = 1.0, **kw) -> nn.Module:
    """torchvision ResNet34: 21,797,672 parameters at 1000 classes."""
    return ResNet(tvr.BasicBlock, [3, 4, 6, 3], num_classes=num_classes, width_mult=width_mult, **kw)


@register_model("classification")
def resnet50(*, num_classes: int = 1000, width_mult: float = 1.0, **kw) -> nn.Module:
    """torchvision ResNet50: 25,557,032 parameters at 1000 classes."""
    return ResNet(tvr.Bottleneck, [3, 4, 6, 3], num_classes=num_classes, width_mult=width_mult, **kw)
