"""YOLOv3 (Redmon & Farhadi, 2018) on MobileNetV1 and ResNet34 backbones from the classification registry.

The head is the standard one (as in the paper and PaddleDetection): three scales at strides
32 / 16 / 8, three anchors each (nine in all), each scale a detection block of alternating
1x1 / 3x3 convolutions whose route is reduced by a 1x1 conv, upsampled 2x and concatenated
with the next shallower backbone map. Activations are ReLU rather than darknet's leaky ReLU,
so that INT8 runtimes fuse every conv with its activation.

In training mode ``forward`` returns the three raw maps (for the loss); in eval mode it also
decodes them, in the graph, to one tensor ``[N, M, 4 + C]``: boxes ``x1, y1, x2, y2`` in input
pixels and per-class scores ``sigmoid(objectness) * sigmoid(class)``. That decoded tensor is
what the exported ONNX file returns; non-maximum suppression is a documented post-processing
step shared by the PyTorch and ONNX paths (:func:`slimzoo.tasks.detection.postprocess`).
"""
from __future__ import annotations

import torch
from torch import nn

from ._registry import make_divisible, register_model

# COCO anchors of YOLOv3 (w, h in pixels at a 608x608 input), stored relative to the input size
ANCHORS_608 = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326))
ANCHOR_MASKS = ((6, 7, 8), (3, 4, 5), (0, 1, 2))  # stride 32, 16, 8


def _cbr(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DetectionBlock(nn.Module):
    """conv1x1 -> conv3x3 -> conv1x1 -> conv3x3 -> conv1x1 (the route), then conv3x3 (the tip)."""

    def __init__(self, cin: int, ch: int):
        super().__init__()
        self.convs = nn.Sequential(_cbr(cin, ch, 1), _cbr(ch, 2 * ch, 3), _cbr(2 * ch, ch, 1), _cbr(ch, 2 * ch, 3),
                                   _cbr(2 * ch, ch, 1))
        self.tip = _cbr(ch, 2 * ch, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        route = self.convs(x)
        return route, self.tip(route)


class MobileNetV1Backbone(nn.Module):
    """MobileNetV1 ``features`` (same module names as the classifier), returning stride 8 / 16 / 32 maps."""

    def __init__(self, width_mult: float = 1.0):
        super().__init__()
        from .mobilenet_v1 import MobileNetV1

        m = MobileNetV1(num_classes=1, width_mult=width_mult)
        self.features = m.features
        ends = m.stage_indices
        self.ends = ends
        self.out_channels = [m.features[i].pw[0].out_channels for i in ends]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.ends:
                outs.append(x)
        return outs


class ResNetBackbone(nn.Module):
    """A registry ResNet without pool and classifier (same module names), returning layer2/3/4 maps."""

    def __init__(self, name: str = "resnet34", width_mult: float = 1.0):
        super().__init__()
        from ._registry import create_model

        m = create_model(name, num_classes=1, width_mult=width_mult)
        for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, k, getattr(m, k))
        self.out_channels = [self._width(self.layer2), self._width(self.layer3), self._width(self.layer4)]

    @staticmethod
    def _width(layer: nn.Sequential) -> int:
        last = layer[-1]
        return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class YOLOv3(nn.Module):
    """YOLOv3 head over a backbone's stride 8 / 16 / 32 maps; see the module docstring for outputs."""

    def __init__(self, backbone: nn.Module, num_classes: int, width_mult: float = 1.0,
                 anchors: tuple = ANCHORS_608, anchor_size: int = 608):
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.num_anchors = 3
        # anchors relative to the input size, so one model serves any input resolution
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32) / anchor_size, persistent=False)
        c3, c4, c5 = backbone.out_channels
        chs = [make_divisible(c * width_mult) for c in (512, 256, 128)]
        self.blocks = nn.ModuleList()
        self.routes = nn.ModuleList()
        self.outputs = nn.ModuleList()
        cin = c5
        for i, (ch, lateral) in enumerate(zip(chs, (None, c4, c3), strict=True)):
            if lateral is not None:
                cin = chs[i - 1] // 2 + lateral
            self.blocks.append(DetectionBlock(cin, ch))
            self.outputs.append(nn.Conv2d(2 * ch, self.num_anchors * (5 + num_classes), 1))
            if i < 2:
                self.routes.append(_cbr(ch, ch // 2, 1))
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        for m in self.outputs:
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0.0)
            with torch.no_grad():  # start with low objectness, as detectors usually do
                m.bias.view(self.num_anchors, 5 + num_classes)[:, 4] = -4.0

    def forward_raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three raw maps ``[N, 3 * (5 + C), H, W]`` at strides 32, 16, 8."""
        c3, c4, c5 = self.backbone(x)
        outs = []
        y, route = c5, None
        for i, lateral in enumerate((None, c4, c3)):
            if lateral is not None:
                y = torch.cat([self.upsample(self.routes[i - 1](route)), lateral], dim=1)
            route, tip = self.blocks[i](y)
            outs.append(self.outputs[i](tip))
        return outs

    def decode(self, raw: list[torch.Tensor], image_hw: tuple) -> torch.Tensor:
        """Raw maps to ``[N, M, 4 + C]``: xyxy boxes in input pixels and per-class scores."""
        out = []
        for p, mask in zip(raw, ANCHOR_MASKS, strict=True):
            n, _, h, w = p.shape
            p = p.view(n, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)
            boxes = decode_boxes(p, self.anchors[list(mask)], image_hw)
            scores = torch.sigmoid(p[..., 4:5]) * torch.sigmoid(p[..., 5:])
            out.append(torch.cat([boxes, scores], dim=-1).reshape(n, -1, 4 + self.num_classes))
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor):
        """Eval: decoded ``[N, M, 4 + C]``. Training: ``{"maps": raw maps, "anchors": this head's anchors}``, what
        :func:`slimzoo.tasks.detection.yolo_loss` reads (the loss uses the model's own anchors and decoding)."""
        raw = self.forward_raw(x)
        if self.training:
            return {"maps": raw, "anchors": self.anchors}
        return self.decode(raw, x.shape[-2:])


def decode_boxes(p: torch.Tensor, anchors: torch.Tensor, image_hw: tuple) -> torch.Tensor:
    """The YOLOv3 box decoding of one scale, shared by the head's output and the loss: ``p`` holds raw predictions
    ``[N, A, H, W, 5 + C]``, ``anchors`` the scale's ``A`` anchors (w, h) relative to the input; returns xyxy boxes
    ``[N, A, H, W, 4]`` in input pixels: centre ``(sigmoid(t) + cell) * stride``, size ``exp(t) * anchor``."""
    ih, iw = image_hw
    a, h, w = p.shape[1], p.shape[2], p.shape[3]
    gy = torch.arange(h, dtype=p.dtype, device=p.device).view(1, 1, h, 1)
    gx = torch.arange(w, dtype=p.dtype, device=p.device).view(1, 1, 1, w)
    aw = (anchors[:, 0] * iw).view(1, a, 1, 1)
    ah = (anchors[:, 1] * ih).view(1, a, 1, 1)
    cx = (torch.sigmoid(p[..., 0]) + gx) * (iw / w)
    cy = (torch.sigmoid(p[..., 1]) + gy) * (ih / h)
    bw = torch.exp(p[..., 2].clamp(max=10.0)) * aw
    bh = torch.exp(p[..., 3].clamp(max=10.0)) * ah
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)


@register_model("detection")
def yolov3_mobilenet_v1(*, num_classes: int = 80, width_mult: float = 1.0, **kw) -> YOLOv3:
    """YOLOv3 with a MobileNetV1 backbone (PaddleDetection's MobileNet-V1-YOLOv3)."""
    return YOLOv3(MobileNetV1Backbone(width_mult), num_classes, width_mult, **kw)


@register_model("detection")
def yolov3_resnet34(*, num_classes: int = 80, width_mult: float = 1.0, **kw) -> YOLOv3:
    """YOLOv3 with a ResNet34 backbone (PaddleDetection's R34-YOLOv3)."""
    return YOLOv3(ResNetBackbone("resnet34", width_mult), num_classes, width_mult, **kw)
