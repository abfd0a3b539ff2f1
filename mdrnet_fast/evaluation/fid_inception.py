"""The Inception v3 that FID is defined with (Heusel et al. 2017: TensorFlow's 2015-12-05 graph), as a feature
extractor for torchmetrics' FrechetInceptionDistance: (B,3,H,W) images in [0, 1] -> (B,2048) pool features.

The layer names are torchvision's Inception3 names, so the published PyTorch port of those weights loads as it
is: `pt_inception-2015-12-05-6726825d.pth` (the pytorch-fid project's release file). The graph differs from
torchvision's Inception3 where TensorFlow's did: batch-norm eps 1e-3, average pools that leave the zero padding
out of the mean, and a max pool in the last block's pool branch. Inputs are resized to 299x299 (bilinear, no
antialias) and mapped to [-1, 1], as that port does.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_into, load_state_dict

FEATURES = 2048
FILE_NAME = "pt_inception-2015-12-05-6726825d.pth"
Kernel = Union[int, Tuple[int, int]]


class _Conv(nn.Module):
    """conv (no bias) + batch norm + ReLU: torchvision's BasicConv2d names (conv, bn)."""

    def __init__(self, cin: int, cout: int, kernel: Kernel, stride: int = 1, padding: Kernel = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TF's mean leaves the padding out


def _cat(*branches):
    return torch.cat(branches, 1)


class _BlockA(nn.Module):  # Mixed_5b..d
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x):
        return _cat(self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                    self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(_avg_pool(x)))


class _BlockB(nn.Module):  # Mixed_6a: grid 35 -> 17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = _Conv(64, 96, 3, padding=1), _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return _cat(self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                    F.max_pool2d(x, 3, stride=2))


def _row(c: int, cout: int) -> nn.Module:
    return _Conv(c, cout, (1, 7), padding=(0, 3))


def _col(c: int, cout: int) -> nn.Module:
    return _Conv(c, cout, (7, 1), padding=(3, 0))


class _BlockC(nn.Module):  # Mixed_6b..e: factorised 7x7
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = _Conv(cin, c7, 1), _row(c7, c7), _col(c7, 192)
        self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3 = _Conv(cin, c7, 1), _col(c7, c7), _row(c7, c7)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = _col(c7, c7), _row(c7, 192)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return _cat(self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x)))


class _BlockD(nn.Module):  # Mixed_7a: grid 17 -> 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1, self.branch7x7x3_2 = _Conv(cin, 192, 1), _row(192, 192)
        self.branch7x7x3_3, self.branch7x7x3_4 = _col(192, 192), _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        d = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            d = layer(d)
        return _cat(self.branch3x3_2(self.branch3x3_1(x)), d, F.max_pool2d(x, 3, stride=2))


class _BlockE(nn.Module):  # Mixed_7b, 7c: expanded filter banks
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the FID graph's Mixed_7c pools by max, unlike the paper's Inception
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = _Conv(384, 384, (1, 3), padding=(0, 1)), _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return _cat(self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3), self.branch3x3dbl_3a(d),
                    self.branch3x3dbl_3b(d), self.branch_pool(pooled))


class FIDInception(nn.Module):
    """(B,3,H,W) float images in [0, 1] -> (B,2048) float32 features (the final average pool).

    `num_features` tells torchmetrics the width without a trial forward. Build it with `from_file` (the
    published weights); a bare FIDInception() has random weights and is for tests only.
    """

    num_features = FEATURES

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)
        self.eval().requires_grad_(False)

    @classmethod
    def from_file(cls, path) -> "FIDInception":
        """The network with the weights of `path` (a state_dict with torchvision's Inception3 names; the
        classifier `fc.*` is ignored)."""
        return load_into(cls(), load_state_dict(path, "--inception-weights"), path, "--inception-weights",
                         ignore=("fc.", "AuxLogits."))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FIDInception takes (B,3,H,W) images in [0, 1], got shape {tuple(images.shape)}")
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
            x = getattr(self, name)(x)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                     "Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return x.mean((2, 3))
