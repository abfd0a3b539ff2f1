"""SPEC §1: partial convolution (Liu et al. 2018, NVIDIA PartialConv2d)."""
import torch
import torch.nn.functional as F

from ._common import pair

MASK_EPS = 1e-8


def partial_conv2d(x, mask, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, multi_channel=False):
    """Returns (out, new_mask). `mask` is (B,1,H,W), or (B,C_in,H,W) when multi_channel; None = all ones."""
    stride, padding, dilation = pair(stride, "stride"), pair(padding, "padding"), pair(dilation, "dilation")
    kh, kw = weight.shape[-2:]
    c_in = x.shape[1]
    if mask is None:
        mask = x.new_ones(x.shape[0], c_in if multi_channel else 1, *x.shape[2:])
    mask = mask.to(x.dtype)
    with torch.no_grad():  # no gradient flows into the mask
        ones = mask.new_ones(1, c_in if multi_channel else 1, kh, kw)
        msum = F.conv2d(mask, ones, None, stride, padding, dilation)
        winsize = kh * kw * (c_in if multi_channel else 1)
        new_mask = torch.clamp(msum, 0, 1)
        # at least fp32: in fp16 MASK_EPS underflows to 0, and an empty window would give inf * 0 = NaN
        wide = msum.to(torch.promote_types(msum.dtype, torch.float32))
        ratio = (winsize / (wide + MASK_EPS) * torch.clamp(wide, 0, 1)).to(msum.dtype)
        if multi_channel:
            new_mask = new_mask.expand(-1, weight.shape[0], -1, -1).contiguous()
    raw = F.conv2d(x * mask, weight, None, stride, padding, dilation, groups)
    if bias is not None:
        out = (raw * ratio + bias.view(1, -1, 1, 1)) * new_mask
    else:
        out = raw * ratio
    return out, new_mask
