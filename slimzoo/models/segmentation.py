"""Semantic segmentation: DeepLabv3 on a dilated MobileNetV2 (Chen et al., 2017) and Fast-SCNN (Poudel et al., 2019).

Both return per-class logits at the input resolution (bilinear upsampling in the graph), in
training and in eval mode, for any input size: the exported ONNX files take dynamic height and
width, so the same file is evaluated at the dataset's size and timed at the reference's 769x769.

Pyramid pooling with bins > 1 is written as two small averaging matrices (:func:`adaptive_avg_pool`)
instead of ``nn.AdaptiveAvgPool2d``: the ONNX exporters only handle adaptive pooling to 1x1 or to
sizes that divide the input, which a dynamic-size file cannot promise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import make_divisible, register_model


def _cbr(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _pool_matrix(n: torch.Tensor | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``[bins, n]`` matrix whose rows average the cells adaptive pooling assigns to each bin."""
    idx = torch.arange(n, device=like.device, dtype=like.dtype)
    b = torch.arange(bins, device=like.device, dtype=like.dtype)
    nf = idx.new_tensor(0) + n  # n as a tensor, so tracing keeps it symbolic
    start = torch.floor(b * nf / bins)
    end = torch.ceil((b + 1) * nf / bins)
    m = ((idx[None, :] >= start[:, None]) & (idx[None, :] < end[:, None])).to(like.dtype)
    return m / m.sum(dim=1, keepdim=True)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)``, exportable to ONNX for any input size."""
    if bins == 1:
        return x.mean(dim=(2, 3), keepdim=True)
    mh = _pool_matrix(x.shape[2], bins, x)
    mw = _pool_matrix(x.shape[3], bins, x)
    return torch.matmul(torch.matmul(mh, x), mw.transpose(0, 1))


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- DeepLabv3 on MobileNetV2

class MobileNetV2Backbone(nn.Module):
    """The registry's MobileNetV2 ``features`` (same module names as the classifier), output stride 16:
    the last stride-2 stage keeps its resolution with dilated depthwise convs instead (DeepLabv3)."""

    def __init__(self, width_mult: float = 1.0, keep_last_conv: bool = True):
        super().__init__()
        from ._registry import create_model

        m = create_model("mobilenet_v2", num_classes=1, width_mult=width_mult)
        feats = m.features if keep_last_conv else m.features[:-1]
        self.features = feats
        stride, dilation = 1, 1
        for block in feats:
            dw = [c for c in block.modules() if isinstance(c, nn.Conv2d) and c.groups > 1 and c.groups == c.in_channels]
            if not dw and isinstance(block, nn.Sequential) and isinstance(block[0], nn.Conv2d):
                dw = [block[0]]  # the stem conv
            for conv in dw:
                if conv.stride == (2, 2):
                    if stride >= 16:
                        conv.stride = (1, 1)
                        dilation *= 2
                        conv.dilation, conv.padding = (dilation // 2,) * 2, (dilation // 2,) * 2
                        continue
                    stride *= 2
                elif dilation > 1:
                    conv.dilation, conv.padding = (dilation,) * 2, (dilation,) * 2
        last = [c for c in feats.modules() if isinstance(c, nn.Conv2d)][-1]
        self.out_channels = last.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, one 3x3 branch per rate, image pooling, then a 1x1 projection."""

    def __init__(self, cin: int, ch: int, rates: tuple[int, ...]):
        super().__init__()
        self.branches = nn.ModuleList([_cbr(cin, ch, 1)] + [_cbr(cin, ch, 3, dilation=r) for r in rates])
        self.pool = _cbr(cin, ch, 1)
        self.project = _cbr(ch * (len(rates) + 2), ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x.mean(dim=(2, 3), keepdim=True)).expand_as(outs[0]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3(nn.Module):
    """Backbone at output stride 16, ASPP, an optional 3x3 conv, a 1x1 classifier, upsampled to the input."""

    def __init__(self, backbone: nn.Module, num_classes: int, ch: int, rates: tuple[int, ...], head_conv: bool):
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.out_channels, ch, rates)
        self.head = _cbr(ch, ch, 3) if head_conv else nn.Identity()
        self.classifier = nn.Conv2d(ch, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _up(self.classifier(self.head(self.aspp(self.backbone(x)))), x)


@register_model("segmentation")
def deeplabv3_mobilenet_v2(*, num_classes: int = 19, width_mult: float = 1.0, **kw) -> nn.Module:
    """DeepLabv3 as in the paper's MobileNetV2 setting: ASPP with 256 channels at rates 6/12/18 and a 3x3 head
    conv (5.8M parameters at 19 classes)."""
    return DeepLabV3(MobileNetV2Backbone(width_mult), num_classes, make_divisible(256 * min(1.0, width_mult)),
                     (6, 12, 18), head_conv=True, **kw)


@register_model("segmentation")
def deeplabv3_mobilenet_v2_lite(*, num_classes: int = 19, width_mult: float = 1.0, **kw) -> nn.Module:
    """The light configuration (the reference's 7.4 MB file): MobileNetV2 up to its 320-channel stage,
    ASPP of a 1x1 branch and image pooling at 128 channels, no head conv (1.9M parameters at 19 classes)."""
    return DeepLabV3(MobileNetV2Backbone(width_mult, keep_last_conv=False), num_classes,
                     make_divisible(128 * min(1.0, width_mult)), (), head_conv=False, **kw)


# ---------------------------------------------------------------- Fast-SCNN

class _DSConv(nn.Sequential):
    """Depthwise-separable conv: 3x3 depthwise + BN + ReLU, 1x1 pointwise + BN + ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(_cbr(cin, cin, 3, stride, groups=cin), _cbr(cin, cout, 1))


class _Bottleneck(nn.Module):
    """MobileNetV2 inverted residual (expansion ``t``), residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, t: int = 6):
        super().__init__()
        hid = cin * t
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(_cbr(cin, hid, 1), _cbr(hid, hid, 3, stride, groups=hid),
                                  nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res else y


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling: pool to 1/2/3/6 bins, 1x1 conv each, upsample, concat with the input, 1x1 conv."""

    def __init__(self, cin: int, cout: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.bins = bins
        inter = cin // 4
        self.stages = nn.ModuleList([_cbr(cin, inter, 1) for _ in bins])
        self.out = _cbr(cin + inter * len(bins), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x] + [_up(stage(adaptive_avg_pool(x, b)), x) for b, stage in zip(self.bins, self.stages, strict=True)]
        return self.out(torch.cat(feats, dim=1))


class FastSCNN(nn.Module):
    """Learning to downsample (1/8), global feature extractor (1/32) with pyramid pooling, feature fusion
    of the two branches, and a classifier of two DSConvs and a 1x1 conv, upsampled to the input."""

    def __init__(self, num_classes: int = 19, width_mult: float = 1.0):
        super().__init__()
        c = [make_divisible(v * width_mult) for v in (32, 48, 64, 96, 128)]
        self.learning_to_downsample = nn.Sequential(_cbr(3, c[0], 3, 2), _DSConv(c[0], c[1], 2),
                                                    _DSConv(c[1], c[2], 2))
        blocks, cin = [], c[2]
        for cout, stride in ((c[2], 2), (c[3], 2), (c[4], 1)):
            for i in range(3):
                blocks.append(_Bottleneck(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.global_feature = nn.Sequential(*blocks, PyramidPooling(c[4], c[4]))
        self.fusion_high = nn.Sequential(nn.Conv2d(c[2], c[4], 1, bias=False), nn.BatchNorm2d(c[4]))
        self.fusion_low = nn.Sequential(_cbr(c[4], c[4], 3, groups=c[4]), nn.Conv2d(c[4], c[4], 1, bias=False),
                                        nn.BatchNorm2d(c[4]))
        self.classifier = nn.Sequential(_DSConv(c[4], c[4]), _DSConv(c[4], c[4]), nn.Dropout(0.1),
                                        nn.Conv2d(c[4], num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        high = self.learning_to_downsample(x)
        low = _up(self.global_feature(high), high)
        fused = F.relu(self.fusion_high(high) + self.fusion_low(low))
        return _up(self.classifier(fused), x)


@register_model("segmentation")
def fast_scnn(*, num_classes: int = 19, width_mult: float = 1.0, **kw) -> nn.Module:
    """Fast-SCNN as in the paper (1.1M parameters at 19 classes)."""
    return FastSCNN(num_classes=num_classes, width_mult=width_mult, **kw)
