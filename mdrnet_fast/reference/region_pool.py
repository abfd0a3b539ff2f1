"""SPEC §3: region-wise average pooling and broadcast (Zhu et al. 2020, SEAN)."""
import torch
import torch.nn.functional as F

from ._common import acc_dtype


def seg_weights(seg, num_classes, size, dtype):
    """seg as (B,n,h,w) float weights at `size`: labels become one-hot, other sizes are resized (nearest)."""
    if not seg.is_floating_point():
        seg = F.one_hot(seg.long(), num_classes).permute(0, 3, 1, 2)
    seg = seg.to(dtype)
    if tuple(seg.shape[-2:]) != tuple(size):
        seg = F.interpolate(seg, size=tuple(size), mode="nearest")
    return seg


def region_avg_pool(feat, seg, num_classes=None):
    """codes[b,i,:] = sum_hw feat*seg[b,i] / sum_hw seg[b,i]; zero for an absent region."""
    acc = acc_dtype(feat.dtype)
    w = seg_weights(seg, num_classes, feat.shape[-2:], acc)
    num = torch.einsum("bchw,bnhw->bnc", feat.to(acc), w)
    area = w.sum(dim=(2, 3)).unsqueeze(-1)
    present = area > 0
    # divide by a safe area: 0/0 in the unused branch of where() would poison the gradient
    codes = torch.where(present, num / torch.where(present, area, torch.ones_like(area)), torch.zeros_like(num))
    return codes.to(feat.dtype)


def region_broadcast(codes, seg, num_classes=None):
    """out[b,:,h,w] = sum_i seg[b,i,h,w] * codes[b,i,:], at the resolution of seg."""
    acc = acc_dtype(codes.dtype)
    size = seg.shape[-2:]
    w = seg_weights(seg, num_classes, size, acc)
    return torch.einsum("bnc,bnhw->bchw", codes.to(acc), w).to(codes.dtype)
