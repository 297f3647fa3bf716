"""Detector and backbone shapes that structured pruning meets outside the repo, as plain torch
modules (no refold imports): a YOLOv8-style detector (C2f, SPPF, PAN neck, decoupled head, DFL)
and a cross-stage-partial backbone (CSPDarknet-style: split into halves, one half through a
block, concatenated back). Random weights with non-trivial BatchNorm statistics.

    net, x = yolov8(width=0.125, depth=0.33, imgsz=128)    # 8/16/32/64/128 channels
    y = net(x)                                             # [1, 4 + nc, anchors]
    csp, x = csp_backbone()
"""
from __future__ import annotations

import math

import torch
from torch import nn


def randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every BatchNorm gets random gamma, beta, running mean and variance (default statistics
    would make BN an identity up to eps and hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_mean.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return module.eval()


# -- YOLOv8 (ultralytics' layout, inference head) ------------------------------------------------
class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True):
        super().__init__()
        self.cv1, self.cv2 = Conv(c1, c2, 3), Conv(c2, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """cv1 (1x1, 2c channels) -> two halves; n bottlenecks, each reading the last piece and
    appending its output; concat of the 2 + n pieces -> cv2 (1x1)."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, split: str = "chunk"):
        super().__init__()
        self.c = c2 // 2
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))
        self.split = split

    def forward(self, x):
        y = self.cv1(x)
        y = list(y.chunk(2, 1) if self.split == "chunk" else y.split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """cv1, three chained 5x5 max pools, concat of the four, cv2."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1, self.cv2 = Conv(c1, c_, 1), Conv(c_ * 4, c2, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """Distribution focal loss integral: softmax over reg_max bins, then a fixed 1x1 conv whose
    weights are 0 .. reg_max - 1 (the expected bin)."""

    def __init__(self, c1: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


class Detect(nn.Module):
    """Decoupled head: per level a box branch (4 * reg_max) and a class branch; the levels are
    flattened and concatenated, boxes decoded by DFL against fixed anchors."""

    def __init__(self, nc: int, ch: tuple[int, ...], strides: tuple[int, ...], imgsz: int, reg_max: int = 16):
        super().__init__()
        self.nc, self.reg_max, self.no = nc, reg_max, nc + 4 * reg_max
        c2, c3 = max(16, ch[0] // 4, reg_max * 4), max(ch[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
                                 for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(reg_max)
        anchors, stride_t = [], []
        for s in strides:  # the anchor points of each level at the export size (cell centres)
            h = w = imgsz // s
            sy, sx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
            anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
            stride_t.append(torch.full((h * w, 1), float(s)))
        self.register_buffer("anchors", torch.cat(anchors).transpose(0, 1).unsqueeze(0))  # [1, 2, A]
        self.register_buffer("strides", torch.cat(stride_t).transpose(0, 1))  # [1, A]

    def forward(self, xs):
        xs = [torch.cat((b(x), c(x)), 1) for x, b, c in zip(xs, self.cv2, self.cv3)]
        n = xs[0].shape[0]
        x_cat = torch.cat([x.view(n, self.no, -1) for x in xs], 2)
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)  # dist2bbox, xywh
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class YOLOv8(nn.Module):
    """Backbone (Conv / C2f stages, SPPF), PAN neck (upsample + concat, downsample + concat),
    detect head on P3 / P4 / P5. ``width`` and ``depth`` are ultralytics' multipliers (n: 0.25 /
    0.33); ``split``: C2f halves by ``chunk`` or by ``split((c, c))``."""

    def __init__(self, nc: int = 4, width: float = 0.25, depth: float = 0.33, imgsz: int = 128,
                 split: str = "chunk", reg_max: int = 16):
        super().__init__()
        w = lambda c: max(8, int(math.ceil(c * width / 8) * 8))  # noqa: E731  (ultralytics' make_divisible)
        d = lambda n: max(round(n * depth), 1)  # noqa: E731
        c1, c2, c3, c4, c5 = w(64), w(128), w(256), w(512), w(1024)
        self.b0, self.b1 = Conv(3, c1, 3, 2), Conv(c1, c2, 3, 2)
        self.b2 = C2f(c2, c2, d(3), True, split)
        self.b3, self.b4 = Conv(c2, c3, 3, 2), C2f(c3, c3, d(6), True, split)
        self.b5, self.b6 = Conv(c3, c4, 3, 2), C2f(c4, c4, d(6), True, split)
        self.b7, self.b8 = Conv(c4, c5, 3, 2), C2f(c5, c5, d(3), True, split)
        self.b9 = SPPF(c5, c5)
        self.up = nn.Upsample(None, 2, "nearest")
        self.h12 = C2f(c5 + c4, c4, d(3), False, split)
        self.h15 = C2f(c4 + c3, c3, d(3), False, split)
        self.h16, self.h18 = Conv(c3, c3, 3, 2), C2f(c3 + c4, c4, d(3), False, split)
        self.h19, self.h21 = Conv(c4, c4, 3, 2), C2f(c4 + c5, c5, d(3), False, split)
        self.detect = Detect(nc, (c3, c4, c5), (8, 16, 32), imgsz, reg_max)

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h12 = self.h12(torch.cat([self.up(p5), p4], 1))
        h15 = self.h15(torch.cat([self.up(h12), p3], 1))
        h18 = self.h18(torch.cat([self.h16(h15), h12], 1))
        h21 = self.h21(torch.cat([self.h19(h18), p5], 1))
        return self.detect([h15, h18, h21])


def yolov8(width: float = 0.125, depth: float = 0.33, imgsz: int = 128, nc: int = 4, split: str = "chunk",
           seed: int = 0) -> tuple[YOLOv8, torch.Tensor]:
    """A random YOLOv8-style detector in eval mode and an input of [1, 3, imgsz, imgsz]."""
    torch.manual_seed(seed)
    net = randomize_bn(YOLOv8(nc, width, depth, imgsz, split), seed)
    return net, torch.randn(1, 3, imgsz, imgsz)


# -- CSPDarknet-style backbone (timm's CrossStage) -----------------------------------------------
class DarkBlock(nn.Module):
    """1x1 bottleneck then 3x3, residual."""

    def __init__(self, c: int, mid: int):
        super().__init__()
        self.conv1, self.conv2 = Conv(c, mid, 1), Conv(mid, c, 3)

    def forward(self, x):
        return x + self.conv2(self.conv1(x))


class CrossStage(nn.Module):
    """Downsample, expand, split into halves: one half stays (xs), the other runs through the
    blocks and a transition (xb); concat of the two, then the stage's transition."""

    def __init__(self, c1: int, c2: int, depth: int, split: str = "chunk"):
        super().__init__()
        self.conv_down = Conv(c1, c2, 3, 2)
        self.conv_exp = Conv(c2, c2, 1)
        h = c2 // 2
        self.blocks = nn.Sequential(*(DarkBlock(h, h // 2) for _ in range(depth)))
        self.conv_transition_b = Conv(h, h, 1)
        self.conv_transition = Conv(c2, c2, 1)
        self.split, self.h = split, h

    def forward(self, x):
        x = self.conv_exp(self.conv_down(x))
        xs, xb = x.chunk(2, 1) if self.split == "chunk" else x.split(self.h, 1)
        xb = self.conv_transition_b(self.blocks(xb))
        return self.conv_transition(torch.cat([xs, xb], 1))


class CSPBackbone(nn.Module):
    """Stem, CSP stages, global pool and a classifier."""

    def __init__(self, widths=(16, 32, 64, 64), depths=(1, 2, 2, 1), classes: int = 10, split: str = "chunk"):
        super().__init__()
        self.stem = Conv(3, widths[0] // 2, 3)
        stages, c = [], widths[0] // 2
        for wd, dp in zip(widths, depths):
            stages.append(CrossStage(c, wd, dp, split))
            c = wd
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))


def csp_backbone(split: str = "chunk", imgsz: int = 64, seed: int = 0) -> tuple[CSPBackbone, torch.Tensor]:
    """A random CSPDarknet-style classifier in eval mode and an input of [1, 3, imgsz, imgsz]."""
    torch.manual_seed(seed)
    net = randomize_bn(CSPBackbone(split=split), seed)
    return net, torch.randn(1, 3, imgsz, imgsz)
