"""SPADE modulation, instance_norm(x) * (1 + gamma) + beta: one program per (sample, block of channels)
walks its H*W planes in tiles of [BLOCK_C, BLOCK_HW]: statistics (two passes: mean, then the centred
variance, which stays accurate when |mean| >> std), then the modulated output. The backward makes the two
plane reductions, then gx, ggamma and gbeta in one more pass.

NCHW tensors get BLOCK_C small and BLOCK_HW wide, channels_last ones the reverse, so loads stay coalesced;
every tensor is addressed through its own strides, so mixed layouts work too.
"""
import torch
import triton
import triton.language as tl

from .._dispatch import register_kernel
from ..composite._common import acc_dtype, no_autocast, out_format
from ._common import acc_tl, finish, num_warps, out_buffer, pow2


@triton.jit
def _spade_fwd_kernel(x_ptr, g_ptr, be_ptr, out_ptr, mean_ptr, rstd_ptr, C, HW, W,
                      sx_b, sx_c, sx_h, sx_w, sg_b, sg_c, sg_h, sg_w, sbe_b, sbe_c, sbe_h, sbe_w,
                      so_b, so_c, so_h, so_w,
                      EPS: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    x_row = x_ptr + b * sx_b + cs[:, None] * sx_c
    acc = tl.full([BLOCK_C, BLOCK_HW], 0.0, ACC)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = cmask[:, None] & (hw < HW)[None, :]
        h, w = hw // W, hw % W
        acc += tl.load(x_row + (h * sx_h + w * sx_w)[None, :], mask=m, other=0.0).to(ACC)
    mean = tl.sum(acc, axis=1) / HW
    acc = tl.full([BLOCK_C, BLOCK_HW], 0.0, ACC)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = cmask[:, None] & (hw < HW)[None, :]
        h, w = hw // W, hw % W
        x = tl.load(x_row + (h * sx_h + w * sx_w)[None, :], mask=m, other=0.0).to(ACC)
        d = tl.where(m, x - mean[:, None], 0.0)
        acc += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc, axis=1) / HW + EPS)
    tl.store(mean_ptr + b * C + cs, mean, mask=cmask)
    tl.store(rstd_ptr + b * C + cs, rstd, mask=cmask)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = cmask[:, None] & (hw < HW)[None, :]
        h, w = hw // W, hw % W
        x = tl.load(x_row + (h * sx_h + w * sx_w)[None, :], mask=m, other=0.0).to(ACC)
        g = tl.load(g_ptr + b * sg_b + cs[:, None] * sg_c + (h * sg_h + w * sg_w)[None, :], mask=m, other=0.0).to(ACC)
        be = tl.load(be_ptr + b * sbe_b + cs[:, None] * sbe_c + (h * sbe_h + w * sbe_w)[None, :], mask=m,
                     other=0.0).to(ACC)
        out = (x - mean[:, None]) * rstd[:, None] * (1.0 + g) + be
        tl.store(out_ptr + b * so_b + cs[:, None] * so_c + (h * so_h + w * so_w)[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _spade_bwd_kernel(go_ptr, x_ptr, g_ptr, mean_ptr, rstd_ptr, gx_ptr, gg_ptr, gbe_ptr, C, HW, W,
                      sgo_b, sgo_c, sgo_h, sgo_w, sx_b, sx_c, sx_h, sx_w, sg_b, sg_c, sg_h, sg_w,
                      sgx_b, sgx_c, sgx_h, sgx_w, sgg_b, sgg_c, sgg_h, sgg_w, sgbe_b, sgbe_c, sgbe_h, sgbe_w,
                      NEED_X: tl.constexpr, NEED_GAMMA: tl.constexpr, NEED_BETA: tl.constexpr,
                      ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    mean = tl.load(mean_ptr + b * C + cs, mask=cmask, other=0.0).to(ACC)
    rstd = tl.load(rstd_ptr + b * C + cs, mask=cmask, other=0.0).to(ACC)
    go_row = go_ptr + b * sgo_b + cs[:, None] * sgo_c
    x_row = x_ptr + b * sx_b + cs[:, None] * sx_c
    g_row = g_ptr + b * sg_b + cs[:, None] * sg_c
    if NEED_X:
        # gx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = go * (1 + gamma)
        acc1 = tl.full([BLOCK_C, BLOCK_HW], 0.0, ACC)
        acc2 = tl.full([BLOCK_C, BLOCK_HW], 0.0, ACC)
        for start in range(0, HW, BLOCK_HW):
            hw = start + tl.arange(0, BLOCK_HW)
            m = cmask[:, None] & (hw < HW)[None, :]
            h, w = hw // W, hw % W
            go = tl.load(go_row + (h * sgo_h + w * sgo_w)[None, :], mask=m, other=0.0).to(ACC)
            x = tl.load(x_row + (h * sx_h + w * sx_w)[None, :], mask=m, other=0.0).to(ACC)
            g = tl.load(g_row + (h * sg_h + w * sg_w)[None, :], mask=m, other=0.0).to(ACC)
            dxhat = go * (1.0 + g)
            acc1 += dxhat
            acc2 += tl.where(m, dxhat * (x - mean[:, None]) * rstd[:, None], 0.0)
        m1 = tl.sum(acc1, axis=1) / HW
        m2 = tl.sum(acc2, axis=1) / HW
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = cmask[:, None] & (hw < HW)[None, :]
        h, w = hw // W, hw % W
        go = tl.load(go_row + (h * sgo_h + w * sgo_w)[None, :], mask=m, other=0.0).to(ACC)
        if NEED_X or NEED_GAMMA:
            x = tl.load(x_row + (h * sx_h + w * sx_w)[None, :], mask=m, other=0.0).to(ACC)
            xhat = (x - mean[:, None]) * rstd[:, None]
        if NEED_X:
            g = tl.load(g_row + (h * sg_h + w * sg_w)[None, :], mask=m, other=0.0).to(ACC)
            gx = rstd[:, None] * (go * (1.0 + g) - m1[:, None] - xhat * m2[:, None])
            tl.store(gx_ptr + b * sgx_b + cs[:, None] * sgx_c + (h * sgx_h + w * sgx_w)[None, :],
                     gx.to(gx_ptr.dtype.element_ty), mask=m)
        if NEED_GAMMA:
            tl.store(gg_ptr + b * sgg_b + cs[:, None] * sgg_c + (h * sgg_h + w * sgg_w)[None, :],
                     (go * xhat).to(gg_ptr.dtype.element_ty), mask=m)
        if NEED_BETA:
            tl.store(gbe_ptr + b * sgbe_b + cs[:, None] * sgbe_c + (h * sgbe_h + w * sgbe_w)[None, :],
                     go.to(gbe_ptr.dtype.element_ty), mask=m)


def _blocks(x):
    """(BLOCK_C, BLOCK_HW): wide along the dimension that is contiguous in memory."""
    c, hw = x.shape[1], x.shape[2] * x.shape[3]
    if out_format(x) == torch.channels_last:
        block_c = pow2(c, 2, 64)
        return block_c, pow2(hw, 2, max(2, 2048 // block_c))
    block_hw = pow2(hw, 2, 1024)
    return pow2(c, 2, max(2, 2048 // block_hw)), block_hw


@register_kernel("spade_modulate.forward", "triton")
@no_autocast
def forward(x, gamma, beta, eps):
    bsz, c, h, w = x.shape
    out = out_buffer(x.shape, x.dtype, x.device, out_format(x))
    acc = acc_dtype(x.dtype)
    mean = torch.empty((bsz, c), dtype=acc, device=x.device)
    rstd = torch.empty_like(mean)
    if x.numel():
        block_c, block_hw = _blocks(x)
        _spade_fwd_kernel[(bsz, triton.cdiv(c, block_c))](
            x, gamma, beta, out, mean, rstd, c, h * w, w, *x.stride(), *gamma.stride(), *beta.stride(), *out.stride(),
            EPS=float(eps), ACC=acc_tl(x.dtype), BLOCK_C=block_c, BLOCK_HW=block_hw,
            num_warps=num_warps(block_c * block_hw))
    # (an empty plane is the reference's NaN statistics too; SPEC never feeds one)
    return finish(out, x.dtype), mean, rstd


@register_kernel("spade_modulate.backward", "triton")
@no_autocast
def backward(grad_out, x, gamma, mean, rstd, need_x, need_gamma, need_beta):
    bsz, c, h, w = x.shape
    gx = out_buffer(x.shape, x.dtype, x.device, out_format(x)) if need_x else None
    gg = out_buffer(gamma.shape, gamma.dtype, gamma.device, out_format(gamma)) if need_gamma else None
    gbe = out_buffer(grad_out.shape, grad_out.dtype, grad_out.device, out_format(grad_out)) if need_beta else None
    if x.numel() and (need_x or need_gamma or need_beta):
        dummy = (x.new_empty(0), (0, 0, 0, 0))
        (gx_t, gx_s), (gg_t, gg_s), (gbe_t, gbe_s) = (
            (t, t.stride()) if t is not None else dummy for t in (gx, gg, gbe))
        block_c, block_hw = _blocks(x)
        _spade_bwd_kernel[(bsz, triton.cdiv(c, block_c))](
            grad_out, x, gamma, mean.contiguous(), rstd.contiguous(), gx_t, gg_t, gbe_t, c, h * w, w,
            *grad_out.stride(), *x.stride(), *gamma.stride(), *gx_s, *gg_s, *gbe_s,
            NEED_X=bool(need_x), NEED_GAMMA=bool(need_gamma), NEED_BETA=bool(need_beta),
            ACC=acc_tl(mean.dtype), BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=num_warps(block_c * block_hw))
    return tuple(finish(t, d) if t is not None else None
                 for t, d in ((gx, x.dtype), (gg, gamma.dtype), (gbe, grad_out.dtype)))
