"""Region pooling (per (sample, class) sums of feat over the class weights, and the area) and region
broadcast (each pixel gets its class code, or the seg-weighted sum of codes for soft seg).

Pooling is a deterministic two-stage reduction: stage 1 gives each program a (sample, split of H*W, block
of channels) tile and reduces it to [classes, channels] partial sums with a one-hot (labels) or soft
weight matrix times the feature tile (tl.dot in fp32, exact "ieee" products; an explicit broadcast-sum in
fp64), written to a partials buffer; stage 2 sums the splits in a fixed order and normalises by the area.
With a single split, stage 1 writes the result directly.
"""
import torch
import triton
import triton.language as tl

from .._dispatch import register_kernel
from ..composite import region_pool as composite
from ..composite._common import acc_dtype, no_autocast
from ._common import acc_tl, finish, num_warps, out_buffer, pow2, target_programs


@triton.jit
def _pool_partial_kernel(feat_ptr, seg_ptr, part_ptr, apart_ptr, n, C, HW, W, chunk,
                         sf_b, sf_c, sf_h, sf_w,
                         LABELS: tl.constexpr, FINAL: tl.constexpr, NORMALIZE: tl.constexpr,
                         USE_DOT: tl.constexpr, ACC: tl.constexpr,
                         N_PAD: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Sums over pixels [sp*chunk, (sp+1)*chunk) into part[b, sp, class, c] and apart[b, sp, class]; when
    FINAL (one split) part/apart are the (B,n,C) codes and (B,n) area themselves."""
    b = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1)
    pc = tl.program_id(2)
    nsplit = tl.num_programs(1)
    cs = pc * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    cls = tl.arange(0, N_PAD)
    acc = tl.full([N_PAD, BLOCK_C], 0.0, ACC)
    area = tl.full([N_PAD, BLOCK_HW], 0.0, ACC)   # summed once at the end
    lo = sp * chunk
    hi = tl.minimum(lo + chunk, HW)
    for start in range(lo, hi, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        hmask = hw < hi
        h, w = hw // W, hw % W
        f = tl.load(feat_ptr + b * sf_b + cs[None, :] * sf_c + (h * sf_h + w * sf_w)[:, None],
                    mask=hmask[:, None] & cmask[None, :], other=0.0).to(ACC)           # [BLOCK_HW, BLOCK_C]
        if LABELS:
            lab = tl.load(seg_ptr + b * HW + hw, mask=hmask, other=-1)
            wt = (cls[:, None] == lab[None, :]).to(ACC)                               # [N_PAD, BLOCK_HW]
        else:
            wt = tl.load(seg_ptr + (b * n + cls[:, None]) * HW + hw[None, :],
                         mask=(cls < n)[:, None] & hmask[None, :], other=0.0).to(ACC)
        if USE_DOT:
            acc += tl.dot(wt, f, input_precision="ieee")
        else:
            acc += tl.sum(wt[:, :, None] * f[None, :, :], axis=1)
        area += wt
    total = tl.sum(area, axis=1)
    if FINAL:
        if NORMALIZE:
            inv = tl.where(total > 0, 1.0 / tl.where(total > 0, total, 1.0), 0.0)
            acc = acc * inv[:, None]
        tl.store(part_ptr + (b * n + cls[:, None]) * C + cs[None, :], acc.to(part_ptr.dtype.element_ty),
                 mask=(cls < n)[:, None] & cmask[None, :])
        if pc == 0:
            tl.store(apart_ptr + b * n + cls, total, mask=cls < n)
    else:
        row = (b * nsplit + sp) * n + cls
        tl.store(part_ptr + row[:, None] * C + cs[None, :], acc, mask=(cls < n)[:, None] & cmask[None, :])
        if pc == 0:
            tl.store(apart_ptr + row, total, mask=cls < n)


@triton.jit
def _pool_reduce_kernel(part_ptr, apart_ptr, codes_ptr, area_ptr, n, C, nsplit,
                        NORMALIZE: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """codes[b, i, :] = sum over splits (fixed order), divided by the area when NORMALIZE."""
    bi = tl.program_id(0).to(tl.int64)   # b * n + i
    b = bi // n
    i = bi % n
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    acc = tl.full([BLOCK_C], 0.0, ACC)
    total = tl.full([BLOCK_C], 0.0, ACC)
    for sp in range(nsplit):
        row = (b * nsplit + sp) * n + i
        acc += tl.load(part_ptr + row * C + cs, mask=cmask, other=0.0)
        total += tl.load(apart_ptr + row + 0 * cs)       # the area, broadcast over the channel block
    if NORMALIZE:
        acc = acc * tl.where(total > 0, 1.0 / tl.where(total > 0, total, 1.0), 0.0)
    tl.store(codes_ptr + bi * C + cs, acc.to(codes_ptr.dtype.element_ty), mask=cmask)
    if tl.program_id(1) == 0:
        tl.store(area_ptr + bi + 0 * cs, total, mask=cs == 0)


@triton.jit
def _broadcast_kernel(codes_ptr, seg_ptr, out_ptr, n, C, HW,
                      LABELS: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
    """out[b, c, hw] = codes[b, label[b, hw], c], or sum_i seg[b, i, hw] * codes[b, i, c]; out (B,C,H,W) contiguous."""
    hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    hmask = hw < HW
    cmask = cs < C
    m = cmask[:, None] & hmask[None, :]
    if LABELS:
        lab = tl.load(seg_ptr + b * HW + hw, mask=hmask, other=0)
        ok = (lab >= 0) & (lab < n)   # never read outside codes, even for labels the op did not check
        val = tl.load(codes_ptr + (b * n + lab[None, :]) * C + cs[:, None], mask=m & ok[None, :], other=0.0).to(ACC)
    else:
        val = tl.full([BLOCK_C, BLOCK_HW], 0.0, ACC)
        for i in range(n):
            s = tl.load(seg_ptr + (b * n + i) * HW + hw, mask=hmask, other=0.0).to(ACC)
            cv = tl.load(codes_ptr + (b * n + i) * C + cs, mask=cmask, other=0.0).to(ACC)
            val += cv[:, None] * s[None, :]
    tl.store(out_ptr + (b * C + cs[:, None]) * HW + hw[None, :], val.to(out_ptr.dtype.element_ty), mask=m)


def pool(feat, seg, num_classes, normalize, split=None):
    """(codes (B,n,C) in feat's dtype, area (B,n) fp32/fp64); `split` (tests) forces the number of H*W splits."""
    bsz, c, h, w = feat.shape
    n, hw = int(num_classes), h * w
    if feat.numel() == 0 or n == 0:
        return composite.pool(feat, seg, num_classes, normalize)
    seg = seg.contiguous()
    labels = not seg.is_floating_point()
    acc = acc_dtype(feat.dtype)
    use_dot = acc == torch.float32
    if use_dot:  # tl.dot needs every dimension >= 16
        n_pad, block_hw, block_c = pow2(n, 16), 64, pow2(c, 16, 64)
    else:
        n_pad, block_hw, block_c = pow2(n, 2), 32, pow2(c, 2, 16)
    cblocks = triton.cdiv(c, block_c)
    hw_blocks = triton.cdiv(hw, block_hw)
    if split is None:
        split = max(1, target_programs() // (bsz * cblocks))
    split = max(1, min(int(split), hw_blocks))
    chunk = triton.cdiv(hw_blocks, split) * block_hw
    split = triton.cdiv(hw, chunk)       # no empty split
    codes = out_buffer((bsz, n, c), feat.dtype, feat.device)
    area = torch.empty((bsz, n), dtype=acc, device=feat.device)
    common = dict(LABELS=labels, NORMALIZE=bool(normalize), ACC=acc_tl(feat.dtype))
    warps = num_warps(block_hw * block_c)
    if split == 1:
        _pool_partial_kernel[(bsz, 1, cblocks)](
            feat, seg, codes, area, n, c, hw, w, chunk, *feat.stride(), FINAL=True, USE_DOT=use_dot,
            N_PAD=n_pad, BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=warps, **common)
    else:
        part = torch.empty((bsz, split, n, c), dtype=acc, device=feat.device)
        apart = torch.empty((bsz, split, n), dtype=acc, device=feat.device)
        _pool_partial_kernel[(bsz, split, cblocks)](
            feat, seg, part, apart, n, c, hw, w, chunk, *feat.stride(), FINAL=False, USE_DOT=use_dot,
            N_PAD=n_pad, BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=warps, **common)
        block_c2 = pow2(c, 2, 1024)
        _pool_reduce_kernel[(bsz * n, triton.cdiv(c, block_c2))](
            part, apart, codes, area, n, c, split, NORMALIZE=bool(normalize), ACC=acc_tl(feat.dtype),
            BLOCK_C=block_c2, num_warps=num_warps(block_c2))
    return finish(codes, feat.dtype), area


@register_kernel("region_pool.forward", "triton")
@no_autocast
def _pool(feat, seg, num_classes, normalize):
    return pool(feat, seg, num_classes, normalize)


@register_kernel("region_broadcast.forward", "triton")
@no_autocast
def broadcast(codes, seg, num_classes):
    bsz, n, c = codes.shape
    h, w = seg.shape[-2:]
    out = out_buffer((bsz, c, h, w), codes.dtype, codes.device)
    if out.numel():
        codes, seg = codes.contiguous(), seg.contiguous()
        block_hw = pow2(h * w, 2, 256)
        block_c = pow2(c, 2, max(2, 4096 // block_hw))
        _broadcast_kernel[(triton.cdiv(h * w, block_hw), triton.cdiv(c, block_c), bsz)](
            codes, seg, out, n, c, h * w, LABELS=not seg.is_floating_point(), ACC=acc_tl(codes.dtype),
            BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=num_warps(block_c * block_hw))
    return finish(out, codes.dtype)
