"""Region-wise pooling (sum or average) and broadcast; each is the other's backward."""
import torch
import torch.nn.functional as F

from .._dispatch import register_kernel
from ._common import acc_dtype, no_autocast


def weights(seg, num_classes, acc):
    """(B,n,H,W) weights from soft/one-hot seg or (B,H,W) labels (already at the feature size)."""
    if seg.is_floating_point():
        return seg.to(acc)
    return F.one_hot(seg, num_classes).permute(0, 3, 1, 2).to(acc)


@register_kernel("region_pool.forward", "composite")
@no_autocast
def pool(feat, seg, num_classes, normalize):
    """(codes (B,n,C), area (B,n) in fp32): region sums, divided by the area when `normalize`."""
    acc = acc_dtype(feat.dtype)
    w = weights(seg, num_classes, acc)
    total = torch.einsum("bchw,bnhw->bnc", feat.to(acc), w)
    area = w.sum(dim=(2, 3))
    if normalize:
        inv = torch.where(area > 0, 1.0 / torch.where(area > 0, area, torch.ones_like(area)), torch.zeros_like(area))
        total = total * inv.unsqueeze(-1)
    return total.to(feat.dtype).contiguous(), area.contiguous()


@register_kernel("region_broadcast.forward", "composite")
@no_autocast
def broadcast(codes, seg, num_classes):
    acc = acc_dtype(codes.dtype)
    w = weights(seg, num_classes, acc)
    return torch.einsum("bnc,bnhw->bchw", codes.to(acc), w).to(codes.dtype).contiguous()
