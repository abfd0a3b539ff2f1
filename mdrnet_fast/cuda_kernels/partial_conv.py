"""Partial conv on CUDA: the convolution stays in PyTorch (cuDNN); the mask window sums, ratio, bias and
new mask are one CUDA pass after it (csrc/cuda/partial_conv_epilogue.cu), and the backward epilogue
(grad * grad_scale, the deterministic bias gradient) feeds the cuDNN conv backward."""
from .. import _C_cuda
from .._dispatch import register_kernel
from ..composite._common import no_autocast, out_format
from ..composite.partial_conv import conv_raw, conv_raw_backward


@register_kernel("partial_conv2d.forward", "cuda")
@no_autocast
def forward(x, mask, weight, bias, stride, padding, dilation, groups, multi_channel):
    raw = conv_raw(x, mask, weight, stride, padding, dilation, groups)
    kh, kw = weight.shape[-2:]
    winsize = float(kh * kw * (x.shape[1] if multi_channel else 1))
    out, new_mask, grad_scale = _C_cuda.partial_conv_epilogue_forward(
        raw, mask, bias, kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        winsize, multi_channel)
    fmt = out_format(x)
    # the kernel writes a multi-channel new mask in raw's layout (as the cpu one); the op's contract is x's
    return (out.contiguous(memory_format=fmt),
            new_mask.contiguous(memory_format=fmt) if multi_channel else new_mask, grad_scale)


@register_kernel("partial_conv2d.backward", "cuda")
@no_autocast
def backward(grad_out, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups,
             need_x, need_w, need_b):
    grad_raw, grad_bias = _C_cuda.partial_conv_epilogue_backward(grad_out, grad_scale, new_mask, need_b)
    gx, gw = conv_raw_backward(grad_raw, x, mask, weight, stride, padding, dilation, groups, need_x, need_w)
    return gx, gw, (grad_bias if need_b else None)
