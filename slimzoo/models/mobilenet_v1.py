"""MobileNetV1 (Howard et al., 2017): a stem conv and 13 depthwise-separable blocks."""
from __future__ import annotations

import torch
from torch import nn

from ._registry import make_divisible, register_model

# (output channels, stride) of each depthwise-separable block
_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dw = _conv_bn(cin, cin, 3, stride, groups=cin)
        self.pw = _conv_bn(cin, cout, 1, 1)


class MobileNetV1(nn.Module):
    """MobileNetV1; ``features`` yields stride-32 maps, ``stage_indices`` marks stride 8/16/32 ends."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.0):
        super().__init__()
        ch = lambda c: make_divisible(c * width_mult)
        layers: list[nn.Module] = [_conv_bn(3, ch(32), 3, 2)]
        cin = ch(32)
        for cout, stride in _BLOCKS:
            layers.append(DepthwiseSeparable(cin, ch(cout), stride))
            cin = ch(cout)
        self.features = nn.Sequential(*layers)
        # indices into ``features`` after which the output has stride 8, 16, 32
        self.stage_indices = (5, 11, 13)
        self.out_channels = cin
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


@register_model("classification")
def mobilenet_v1(*, num_classes: int = 1000, width_mult: float = 1.0, **kw) -> MobileNetV1:
    """MobileNetV1: 4,231,976 parameters at 1000 classes, width 1.0."""
    return MobileNetV1(num_classes=num_classes, width_mult=width_mult, **kw)
