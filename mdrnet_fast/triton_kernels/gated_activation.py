"""act(y[:, :C]) * sigmoid(y[:, C:]) and its fused backward: one elementwise pass over the half-size output.

Elements are enumerated in the output's memory order (NCHW or channels_last, as `out_format` declares), so
stores are contiguous; every input is addressed through its own strides, so any layout works.
The index math is inlined by hand: under the interpreter every nested jit call costs milliseconds (the
activation, shared with the gated partial conv, is one call per program).
"""
import torch
import triton
import triton.language as tl

from .._dispatch import register_kernel
from ..composite._common import no_autocast, out_format
from ._common import acc_tl, finish, gated_act, out_buffer

_ACT = {"none": 0, "elu": 1, "leaky_relu": 2, "relu": 3}
BLOCK = 1024


@triton.jit
def _gated_kernel(go_ptr, y_ptr, out_ptr, total, C, HW, W,
                  sg_b, sg_c, sg_h, sg_w, sy_b, sy_c, sy_h, sy_w, so_b, so_c, so_h, so_w,
                  BACKWARD: tl.constexpr, DENSE: tl.constexpr, ACT: tl.constexpr, SLOPE: tl.constexpr,
                  ACC: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """Forward: out (B,C,H,W) = act(f) * sigmoid(g). Backward: out (B,2C,H,W) = (d/df, d/dg) of <go, that>."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    if DENSE:
        # y, out (and go) dense in the enumeration order: the feature of element offs sits at offs plus the
        # gate halves before it, and its gate one half-row further on (fewer integer divisions)
        if CHANNELS_LAST:
            half = C
        else:
            half = C * HW
        y_off = offs + (offs // half) * half
        g_off = y_off + half
        o_off = offs
        go_off = offs
        gy_off = y_off          # grad y (backward) is laid out like y
        gy_half = half
    else:
        if CHANNELS_LAST:
            c = offs % C
            hw = (offs // C) % HW
        else:
            hw = offs % HW
            c = (offs // HW) % C
        b = offs // (C * HW)
        h = hw // W
        w = hw % W
        base = b * sy_b + h * sy_h + w * sy_w
        y_off = base + c * sy_c
        g_off = y_off + C * sy_c
        o_off = b * so_b + c * so_c + h * so_h + w * so_w
        go_off = b * sg_b + c * sg_c + h * sg_h + w * sg_w
        gy_off = o_off          # the backward's out is grad y, (B,2C,H,W)
        gy_half = C * so_c
    f = tl.load(y_ptr + y_off, mask=mask, other=0.0).to(ACC)
    g = tl.load(y_ptr + g_off, mask=mask, other=0.0).to(ACC)
    s = 1.0 / (1.0 + tl.exp(-g))
    a, da = gated_act(f, ACT, SLOPE, ACC)
    if BACKWARD:
        go = tl.load(go_ptr + go_off, mask=mask, other=0.0).to(ACC)
        tl.store(out_ptr + gy_off, (go * s * da).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + gy_off + gy_half, (go * a * s * (1.0 - s)).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + o_off, (a * s).to(out_ptr.dtype.element_ty), mask=mask)


def _launch(grad_out, y, out, activation_name, negative_slope):
    b, c2, h, w = y.shape
    c = c2 // 2
    total = b * c * h * w
    if total == 0:
        return
    fmt = out_format(y)
    backward = grad_out is not None
    dense = y.is_contiguous(memory_format=fmt) and (not backward or grad_out.is_contiguous(memory_format=fmt))
    go_strides = grad_out.stride() if backward else (0, 0, 0, 0)
    _gated_kernel[(triton.cdiv(total, BLOCK),)](
        grad_out if backward else y, y, out, total, c, h * w, w, *go_strides, *y.stride(), *out.stride(),
        BACKWARD=backward, DENSE=dense, ACT=_ACT[activation_name],
        SLOPE=float(negative_slope), ACC=acc_tl(y.dtype), CHANNELS_LAST=fmt == torch.channels_last,
        BLOCK=BLOCK, num_warps=4)


@register_kernel("gated_activation.forward", "triton")
@no_autocast
def forward(y, activation_name, negative_slope):
    b, c2, h, w = y.shape
    out = out_buffer((b, c2 // 2, h, w), y.dtype, y.device, out_format(y))
    _launch(None, y, out, activation_name, negative_slope)
    return finish(out, y.dtype)


@register_kernel("gated_activation.backward", "triton")
@no_autocast
def backward(grad_out, y, activation_name, negative_slope):
    grad_y = out_buffer(y.shape, y.dtype, y.device, out_format(y))
    _launch(grad_out, y, grad_y, activation_name, negative_slope)
    return finish(grad_y, y.dtype)
