"""RegionAvgPool: region-wise average pooling (SEAN) as a module."""
import torch.nn as nn

from .. import ops


class RegionAvgPool(nn.Module):
    """forward(feat (B,C,H,W), seg (B,n,h,w) float or (B,h,w) labels) -> codes (B,n,C)."""

    def __init__(self, num_classes=None):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, feat, seg):
        return ops.region_avg_pool(feat, seg, self.num_classes)

    def extra_repr(self):
        return f"num_classes={self.num_classes}"
