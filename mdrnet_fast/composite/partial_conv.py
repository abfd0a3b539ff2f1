"""Partial convolution with explicit gradients (see reference/partial_conv.py for the definition)."""
import torch
import torch.nn.functional as F

from .._dispatch import register_kernel
from ..reference.partial_conv import MASK_EPS
from ._common import acc_dtype, no_autocast, out_format


def conv_raw(x, mask, weight, stride, padding, dilation, groups):
    """conv2d(x * mask, weight): the part every backend leaves to the library convolution."""
    return F.conv2d(x * mask, weight, None, stride, padding, dilation, groups)


def conv_raw_backward(grad_raw, x, mask, weight, stride, padding, dilation, groups, need_x, need_w):
    """Gradients of conv_raw for x and weight, given d loss / d raw."""
    gxm, gw, _ = torch.ops.aten.convolution_backward(
        grad_raw, x * mask, weight, None, stride, padding, dilation, False, [0, 0], groups,
        [need_x, need_w, False])
    # gxm is a fresh tensor: masking it in place saves an input-sized allocation
    gx = gxm.mul_(mask).contiguous(memory_format=out_format(x)) if need_x else None
    return gx, (gw if need_w else None)  # the op gives gw the weight's layout


def around_library_conv(ext):
    """(forward, backward) kernels that run the library convolution (oneDNN / cuDNN) and the fused epilogues
    of a compiled extension `ext` (mdrnet_fast._C or _C_cuda: partial_conv_epilogue_forward / _backward)."""

    def forward(x, mask, weight, bias, stride, padding, dilation, groups, multi_channel):
        raw = conv_raw(x, mask, weight, stride, padding, dilation, groups)
        kh, kw = weight.shape[-2:]
        winsize = float(kh * kw * (x.shape[1] if multi_channel else 1))
        out, new_mask, grad_scale = ext.partial_conv_epilogue_forward(
            raw, mask, bias, kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            winsize, multi_channel)
        fmt = out_format(x)
        # raw (the library's output) normally has x's layout already; then these are no-ops
        return (out.contiguous(memory_format=fmt),
                new_mask.contiguous(memory_format=fmt) if multi_channel else new_mask, grad_scale)

    def backward(grad_out, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups,
                 need_x, need_w, need_b):
        grad_raw, grad_bias = ext.partial_conv_epilogue_backward(grad_out, grad_scale, new_mask, need_b)
        gx, gw = conv_raw_backward(grad_raw, x, mask, weight, stride, padding, dilation, groups, need_x, need_w)
        return gx, gw, (grad_bias if need_b else None)

    return no_autocast(forward), no_autocast(backward)


def mask_window_sum(mask, weight_shape, stride, padding, dilation, multi_channel):
    """msum (B,1,Ho,Wo) in the accumulation dtype: the mask summed over each window (and channels)."""
    kh, kw = weight_shape[-2:]
    plane = mask.to(acc_dtype(mask.dtype)).sum(dim=1, keepdim=True) if multi_channel else mask.to(acc_dtype(mask.dtype))
    ones = plane.new_ones(1, 1, kh, kw)
    return F.conv2d(plane, ones, None, stride, padding, dilation)


@register_kernel("partial_conv2d.forward", "composite")
@no_autocast
def forward(x, mask, weight, bias, stride, padding, dilation, groups, multi_channel):
    """Returns (out, new_mask, grad_scale); grad_scale = d out / d raw, kept for the backward."""
    fmt = out_format(x)
    raw = conv_raw(x, mask, weight, stride, padding, dilation, groups)
    c_out = weight.shape[0]
    winsize = weight.shape[-2] * weight.shape[-1] * (x.shape[1] if multi_channel else 1)
    msum = mask_window_sum(mask, weight.shape, stride, padding, dilation, multi_channel)
    nm = msum.clamp(0, 1)
    ratio = winsize / (msum + MASK_EPS) * nm
    if bias is not None:
        out = (raw.to(ratio.dtype) * ratio + bias.to(ratio.dtype).view(1, -1, 1, 1)) * nm
        grad_scale = ratio * nm
    else:
        out = raw.to(ratio.dtype) * ratio
        grad_scale = ratio
    new_mask = nm.expand(-1, c_out, -1, -1) if multi_channel else nm
    return (out.to(x.dtype).contiguous(memory_format=fmt),
            new_mask.to(x.dtype).contiguous(memory_format=fmt if multi_channel else torch.contiguous_format),
            grad_scale.contiguous())


@register_kernel("partial_conv2d.backward", "composite")
@no_autocast
def backward(grad_out, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups,
             need_x, need_w, need_b):
    grad_raw = (grad_out.to(grad_scale.dtype) * grad_scale).to(grad_out.dtype)
    gb = None
    if need_b:
        gb = (grad_out.to(grad_scale.dtype) * new_mask.to(grad_scale.dtype)).sum(dim=(0, 2, 3)).to(grad_out.dtype)
    gx, gw = conv_raw_backward(grad_raw, x, mask, weight, stride, padding, dilation, groups, need_x, need_w)
    return gx, gw, gb
