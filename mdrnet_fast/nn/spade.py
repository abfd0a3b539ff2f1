"""SPADE (Park et al. 2019): spatially-adaptive modulation of instance-normalised features."""
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


class SPADE(nn.Module):
    """forward(x (B,C,H,W), cond (B,L,h,w)) = instance_norm(x) * (1 + gamma(cond)) + beta(cond).

    cond is resized (nearest) to x's size, then a shared conv+ReLU and two convs give gamma and beta.
    """

    def __init__(self, norm_channels, label_channels, hidden_channels=128, kernel_size=3, eps=1e-5):
        super().__init__()
        pad = kernel_size // 2
        self.eps = eps
        self.shared = nn.Sequential(nn.Conv2d(label_channels, hidden_channels, kernel_size, padding=pad), nn.ReLU())
        self.gamma = nn.Conv2d(hidden_channels, norm_channels, kernel_size, padding=pad)
        self.beta = nn.Conv2d(hidden_channels, norm_channels, kernel_size, padding=pad)

    def forward(self, x, cond):
        if tuple(cond.shape[-2:]) != tuple(x.shape[-2:]):
            cond = F.interpolate(cond, size=tuple(x.shape[-2:]), mode="nearest")
        h = self.shared(cond)
        return ops.spade_modulate(x, self.gamma(h), self.beta(h), self.eps)
