"""MaskedCorrelationMining: the MCM of ShowFace's MREM (§3.3)."""
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


class MaskedCorrelationMining(nn.Module):
    """out = f + W_out(fold(softmax(scale Theta Phi^T) G) * (1 - mask)), with 1x1 theta/phi/g branches.

    forward(f (B,C,H,W), mask (B,1,h,w) 1 = valid): the mask is resized (nearest) to f's size.
    """

    def __init__(self, channels, inner_channels=None, patch_size=2, scale=None):
        super().__init__()
        inner = inner_channels or max(channels // 2, 1)
        self.patch_size, self.scale = patch_size, scale
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)

    def forward(self, f, mask):
        if tuple(mask.shape[-2:]) != tuple(f.shape[-2:]):
            mask = F.interpolate(mask.to(f.dtype), size=tuple(f.shape[-2:]), mode="nearest")
        y = ops.masked_patch_attention(self.theta(f), self.phi(f), self.g(f), mask, self.patch_size, self.scale)
        return f + self.out(y)

    def extra_repr(self):
        return f"patch_size={self.patch_size}"
