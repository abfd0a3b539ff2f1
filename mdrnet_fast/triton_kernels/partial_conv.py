"""Partial convolution (SPEC §1) as Triton implicit GEMMs, forward and backward.

Forward, two launches:
  1. `_msum_kernel`: msum[b, oh, ow] = the mask summed over each receptive field (and over all C_in mask
     channels when multi_channel), into a (B*Ho*Wo) scratch in the accumulation dtype. It is a separate,
     tiny launch because with multi_channel and groups > 1 the sum runs over *all* input channels while a
     conv program only sees its group's channels, and because every output-channel tile would otherwise
     recompute it.
  2. `_fwd_kernel`: raw = conv2d(x * mask, weight) as an implicit GEMM, M = B*Ho*Wo output pixels,
     N = C_out/groups, K = (C_in/groups)*kh*kw (k = (ci, r, s), the weight's own order). The A tile is
     gathered from x at the im2col positions with the mask multiplied in as it is loaded (zero outside the
     image); the B tile comes from the weight. The epilogue loads msum and computes
       new_mask = clamp(msum, 0, 1), ratio = winsize / (msum + 1e-8) * new_mask,
       out = (raw * ratio + bias) * new_mask  (bias)  |  raw * ratio  (no bias),
       grad_scale = d out / d raw = ratio * new_mask  (bias)  |  ratio  (no bias),
     stores out (x's memory format, any strides), new_mask (1 or C_out channels) and grad_scale (by the
     first channel tile only).
Backward (grad_raw = grad_out * grad_scale is formed as the tiles are loaded, never materialised):
  * `_dx_kernel`: dx = (conv_transpose of grad_raw with the weight) * mask, an implicit GEMM over input
    pixels M = B*H*W, N = C_in/groups, K = (C_out/groups)*kh*kw. For an input pixel (ih, iw) and tap (r, s)
    the output pixel is oh = (ih + ph - r*dh) / sh when that divides exactly and lands in [0, Ho) (same for
    w); other (pixel, tap) pairs load zeros. Simple and correct for any stride/dilation; with stride s it
    wastes (1 - 1/s^2) of the K loop on GPU (a stride-phase decomposition would avoid it: not done, for
    clarity).
  * `_dw_kernel`: dW[co, k] = sum over output pixels of grad_raw[m, co] * (masked im2col of x)[m, k], a
    GEMM with the K loop over M = B*Ho*Wo; the bias gradient sum_m grad_out * new_mask rides along in the
    k-tile-0 programs. Deterministic: each program owns a (C_out tile, K tile, M split) and writes its
    partial sums to its own slice of a (splits, C_out, K) fp32/fp64 buffer, reduced by torch's sum over the
    split dimension (fixed order, no atomics). Under the interpreter there is one split.

Precision: fp32 accumulation (fp64 for fp64 inputs, gradcheck). fp32 tiles go to tl.dot as tf32x3 on GPU
(one tf32 pass gave 1.2e-3 at a training size on an H100, over SPEC's 5e-4), exact fp32 in the interpreter. On GPU
bf16/fp16 tiles are fed to tl.dot in their own dtype (tensor cores, fp32 accumulate; x*mask is then rounded
to bf16 as the reference's x*mask is); under the interpreter, which cannot do bf16 arithmetic, bf16 tiles are
converted to fp32 first (fp16 takes the 16-bit path there too). fp64 uses tl.dot in fp64.

Gated partial conv (`gated_forward`, SPEC §2 with a mask, groups == 1): the same forward kernel with GATED
set accumulates the feature channel co and the gate channel co + C_out from one A tile, stores both partial-
conv outputs y (kept for the backward) and act(feature) * sigmoid(gate). Its backward is the gated-activation
backward kernel followed by the partial-conv backward kernels above (not fused: forming grad_y inside the
GEMM gathers would load grad_out, feature and gate and evaluate exp once per tap and per N tile, likely more
than writing and reading grad_y once; unmeasured).

Block sizes: fixed under the interpreter (as large as the problem, so that a test shape is one program and
one K trip: the interpreter pays per program and per loop trip); on GPU `triton.autotune` over a few configs
keyed on (C_in/groups, C_out/groups, K). Whether cuDNN plus the fused epilogue kernels beats this implicit
GEMM on some shapes is unmeasured (no GPU was available when this was written).
"""
import torch
import triton
import triton.language as tl

from .._dispatch import register_kernel, triton_interpreter
from ..composite._common import acc_dtype, no_autocast, out_format
from ..reference.partial_conv import MASK_EPS
from ._common import acc_tl, finish, gated_act, out_buffer, pow2, target_programs


# ------------------------------------------------------------------ kernels

@triton.jit
def _msum_kernel(m_ptr, msum_ptr, P, HoWo, Wo, H, W, T, KHW, KW, SH, SW, PH, PW, DH, DW,
                 smb, smc, smh, smw, ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr):
    """msum[p] for output pixels p of (B, Ho, Wo): the sum of the mask over the T = C_mask*kh*kw taps."""
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    b = (offs_p // HoWo).to(tl.int64)
    q = offs_p % HoWo
    ih0 = (q // Wo) * SH - PH
    iw0 = (q % Wo) * SW - PW
    acc = tl.zeros([BLOCK_P, BLOCK_T], dtype=ACC)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        c = t // KHW
        rs = t % KHW
        ih = ih0[:, None] + (rs // KW)[None, :] * DH
        iw = iw0[:, None] + (rs % KW)[None, :] * DW
        ok = p_ok[:, None] & (t < T)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        acc += tl.load(m_ptr + b[:, None] * smb + c[None, :] * smc + ih * smh + iw * smw, mask=ok, other=0.0).to(ACC)
    tl.store(msum_ptr + offs_p, tl.sum(acc, axis=1), mask=p_ok)


@triton.jit
def _fwd_kernel(x_ptr, m_ptr, w_ptr, bias_ptr, msum_ptr, out_ptr, nm_ptr, gs_ptr, y_ptr,
                M, HoWo, Wo, H, W, CG_IN, CG_OUT, C_OUT, KG, KHW, KW, SH, SW, PH, PW, DH, DW, WINSIZE,
                sxb, sxc, sxh, sxw, smb, smc, smh, smw, swo, swi, swh, sww, sob, soc, soh, sow,
                syb, syc, syh, syw,
                HAS_BIAS: tl.constexpr, MC: tl.constexpr, LOWP: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                GATED: tl.constexpr, ACT: tl.constexpr, SLOPE: tl.constexpr, EPS: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Partial conv forward. GATED (groups == 1, 1-channel mask): the weight has 2*C_OUT rows; each program
    accumulates feature channels co and gate channels co + C_OUT from the same A tile, stores both partial-
    conv outputs to y (B, 2*C_OUT, Ho, Wo; kept for the backward) and act(feature) * sigmoid(gate) to out."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_tiles = tl.cdiv(CG_OUT, BLOCK_N)
    g = pid_n // n_tiles
    nt = pid_n % n_tiles
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    b = (offs_m // HoWo).to(tl.int64)
    q = offs_m % HoWo
    oh = q // Wo
    ow = q % Wo
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < CG_OUT
    co = g * CG_OUT + offs_n
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    if GATED:
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k0 in range(0, KG, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < KG
        ci = offs_k // KHW
        rs = offs_k % KHW
        r = rs // KW
        s = rs % KW
        ih = ih0[:, None] + (r * DH)[None, :]
        iw = iw0[:, None] + (s * DW)[None, :]
        ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        pix = ih * sxh + iw * sxw
        xv = tl.load(x_ptr + b[:, None] * sxb + (g * CG_IN + ci)[None, :] * sxc + pix, mask=ok, other=0.0)
        if MC:
            mv = tl.load(m_ptr + b[:, None] * smb + (g * CG_IN + ci)[None, :] * smc + ih * smh + iw * smw,
                         mask=ok, other=0.0)
        else:
            mv = tl.load(m_ptr + b[:, None] * smb + ih * smh + iw * smw, mask=ok, other=0.0)
        wv = tl.load(w_ptr + co[None, :] * swo + (ci * swi + r * swh + s * sww)[:, None],
                     mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if LOWP:
            a = (xv.to(tl.float32) * mv.to(tl.float32)).to(x_ptr.dtype.element_ty)
        else:
            a = xv.to(ACC) * mv.to(ACC)
            wv = wv.to(ACC)
        acc = tl.dot(a, wv, acc, input_precision=PREC, out_dtype=ACC)  # fp32: tf32x3 on GPU, exact here
        if GATED:
            wg = tl.load(w_ptr + (co + C_OUT)[None, :] * swo + (ci * swi + r * swh + s * sww)[:, None],
                         mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            if not LOWP:
                wg = wg.to(ACC)
            acc_g = tl.dot(a, wg, acc_g, input_precision=PREC, out_dtype=ACC)
    # epilogue: window sum -> ratio, new mask, bias
    msum = tl.load(msum_ptr + offs_m, mask=m_ok, other=0.0)
    nm = tl.minimum(tl.maximum(msum, 0.0), 1.0)
    eps = tl.full([BLOCK_M], EPS, ACC)   # exact 1e-8 in fp64 (a float argument would be fp32)
    ratio = tl.full([BLOCK_M], WINSIZE, ACC) / (msum + eps) * nm
    if HAS_BIAS:
        bias = tl.load(bias_ptr + co, mask=n_ok, other=0.0).to(ACC)
        out = (acc * ratio[:, None] + bias[None, :]) * nm[:, None]
        gs = ratio * nm
    else:
        out = acc * ratio[:, None]
        gs = ratio
    ok2 = m_ok[:, None] & n_ok[None, :]
    if GATED:
        if HAS_BIAS:
            bias_g = tl.load(bias_ptr + C_OUT + co, mask=n_ok, other=0.0).to(ACC)
            gate = (acc_g * ratio[:, None] + bias_g[None, :]) * nm[:, None]
        else:
            gate = acc_g * ratio[:, None]
        yoff = (b * syb + oh * syh + ow * syw)[:, None] + co[None, :] * syc
        tl.store(y_ptr + yoff, out.to(y_ptr.dtype.element_ty), mask=ok2)
        tl.store(y_ptr + yoff + C_OUT * syc, gate.to(y_ptr.dtype.element_ty), mask=ok2)
        # the gated activation reads y as stored (rounded to the output dtype), like the unfused op
        f = out.to(y_ptr.dtype.element_ty).to(ACC)
        gt = gate.to(y_ptr.dtype.element_ty).to(ACC)
        sig = 1.0 / (1.0 + tl.exp(-gt))
        act, _ = gated_act(f, ACT, SLOPE, ACC)
        out = act * sig
    tl.store(out_ptr + (b * sob + oh * soh + ow * sow)[:, None] + co[None, :] * soc,
             out.to(out_ptr.dtype.element_ty), mask=ok2)
    if MC:
        nm2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC) + nm[:, None]
        tl.store(nm_ptr + (b * C_OUT * HoWo + q)[:, None] + co[None, :] * HoWo,
                 nm2.to(nm_ptr.dtype.element_ty), mask=ok2)
    if pid_n == 0:  # the per-pixel outputs, once
        tl.store(gs_ptr + offs_m, gs, mask=m_ok)
        if not MC:
            tl.store(nm_ptr + offs_m, nm.to(nm_ptr.dtype.element_ty), mask=m_ok)


@triton.jit
def _gated_grad(go_ptr, y_ptr, b, c2, oh, ow, ok, C_HALF, sgb, sgc, sgh, sgw, syb, syc, syh, syw,
                ACT: tl.constexpr, SLOPE: tl.constexpr, ACC: tl.constexpr):
    """d loss / d y[b, c2, oh, ow] of out = act(y[:, :C]) * sigmoid(y[:, C:]), formed as it is loaded (the
    gated backward never stores it): channel c2 < C_HALF is a feature, the others gates. Broadcast shapes."""
    gate = c2 >= C_HALF
    c = tl.where(gate, c2 - C_HALF, c2)
    go = tl.load(go_ptr + b * sgb + c * sgc + oh * sgh + ow * sgw, mask=ok, other=0.0).to(ACC)
    f = tl.load(y_ptr + b * syb + c * syc + oh * syh + ow * syw, mask=ok, other=0.0).to(ACC)
    g = tl.load(y_ptr + b * syb + (c + C_HALF) * syc + oh * syh + ow * syw, mask=ok, other=0.0).to(ACC)
    sg = 1.0 / (1.0 + tl.exp(-g))
    a, da = gated_act(f, ACT, SLOPE, ACC)
    return tl.where(gate, go * a * sg * (1.0 - sg), go * sg * da)


@triton.jit
def _dx_kernel(go_ptr, gs_ptr, w_ptr, m_ptr, gx_ptr, y_ptr,
               MX, HW, W, Ho, Wo, CG_IN, CG_OUT, KG, KHW, KW, SH, SW, PH, PW, DH, DW, C_HALF,
               sgb, sgc, sgh, sgw, swo, swi, swh, sww, smb, smc, smh, smw, sxb, sxc, sxh, sxw, syb, syc, syh, syw,
               MC: tl.constexpr, LOWP: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
               GATED: tl.constexpr, ACT: tl.constexpr, SLOPE: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """gx[b, ci, ih, iw] = mask * sum_{co, r, s} grad_raw[b, co, oh, ow] * w[co, ci, r, s], with
    oh = (ih + PH - r*DH) / SH (exact division only), ow likewise. GATED (groups == 1): grad_raw's channels
    are y's 2*C_HALF and its gradient is formed from grad_out (C_HALF channels) and y as it is loaded."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    n_tiles = tl.cdiv(CG_IN, BLOCK_N)
    g = pid_n // n_tiles
    nt = pid_n % n_tiles
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < MX
    b = (offs_m // HW).to(tl.int64)
    q = offs_m % HW
    ih = q // W
    iw = q % W
    offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < CG_IN
    ci = g * CG_IN + offs_n
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k0 in range(0, KG, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < KG
        co = offs_k // KHW
        rs = offs_k % KHW
        r = rs // KW
        s = rs % KW
        th = ih[:, None] + PH - (r * DH)[None, :]
        tw = iw[:, None] + PW - (s * DW)[None, :]
        # the test th >= 0 comes first: the division of a negative th is never used
        thc = tl.maximum(th, 0)
        twc = tl.maximum(tw, 0)
        oh = thc // SH
        ow = twc // SW
        ok = (m_ok[:, None] & k_ok[None, :] & (th >= 0) & (tw >= 0) & (thc - oh * SH == 0)
              & (twc - ow * SW == 0) & (oh < Ho) & (ow < Wo))
        if GATED:
            gov = _gated_grad(go_ptr, y_ptr, b[:, None], co[None, :], oh, ow, ok, C_HALF, sgb, sgc, sgh, sgw,
                              syb, syc, syh, syw, ACT, SLOPE, ACC)
        else:
            gov = tl.load(go_ptr + b[:, None] * sgb + (g * CG_OUT + co)[None, :] * sgc + oh * sgh + ow * sgw,
                          mask=ok, other=0.0)
        gsv = tl.load(gs_ptr + b[:, None] * (Ho * Wo) + oh * Wo + ow, mask=ok, other=0.0)
        wv = tl.load(w_ptr + ((g * CG_OUT + co) * swo + r * swh + s * sww)[:, None] + offs_n[None, :] * swi,
                     mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if LOWP:
            a = (gov.to(tl.float32) * gsv.to(tl.float32)).to(go_ptr.dtype.element_ty)
            acc = tl.dot(a, wv, acc, input_precision=PREC, out_dtype=ACC)
        else:
            a = gov.to(ACC) * gsv.to(ACC)
            acc = tl.dot(a, wv.to(ACC), acc, input_precision=PREC, out_dtype=ACC)
    if MC:
        mv = tl.load(m_ptr + (b * smb + ih * smh + iw * smw)[:, None] + ci[None, :] * smc,
                     mask=m_ok[:, None] & n_ok[None, :], other=0.0).to(ACC)
        gx = acc * mv
    else:
        mv = tl.load(m_ptr + b * smb + ih * smh + iw * smw, mask=m_ok, other=0.0).to(ACC)
        gx = acc * mv[:, None]
    tl.store(gx_ptr + (b * sxb + ih * sxh + iw * sxw)[:, None] + ci[None, :] * sxc,
             gx.to(gx_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _dw_kernel(go_ptr, gs_ptr, nm_ptr, x_ptr, m_ptr, gw_ptr, gb_ptr, y_ptr,
               M, HoWo, Wo, H, W, CG_IN, CG_OUT, C_OUT, KG, KHW, KW, SH, SW, PH, PW, DH, DW, CHUNKS, C_HALF,
               sgb, sgc, sgh, sgw, sxb, sxc, sxh, sxw, smb, smc, smh, smw, syb, syc, syh, syw,
               NEED_W: tl.constexpr, NEED_B: tl.constexpr, MC: tl.constexpr, NM_MC: tl.constexpr, LOWP: tl.constexpr,
               ACC: tl.constexpr, PREC: tl.constexpr, GATED: tl.constexpr, ACT: tl.constexpr,
               SLOPE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Program (tile, g, split) sums M-chunks [split*CHUNKS, (split+1)*CHUNKS) into
    gw[split, co, k] (co in the tile's C_out block of group g, k in its K block) and, for K block 0,
    gb[split, co] = sum grad_out * new_mask. GATED: grad_out is formed from the gating's as in _dx_kernel."""
    tile = tl.program_id(0)
    g = tl.program_id(1)
    sp = tl.program_id(2)
    n_tiles = tl.cdiv(CG_OUT, BLOCK_N)
    nt = tile % n_tiles
    kt = tile // n_tiles
    offs_n = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < CG_OUT
    co = g * CG_OUT + offs_n
    offs_k = kt * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = offs_k < KG
    ci = offs_k // KHW
    rs = offs_k % KHW
    r = rs // KW
    s = rs % KW
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=ACC)
    gb = tl.zeros([BLOCK_N], dtype=ACC)
    do_b = kt == 0
    for i in range(0, CHUNKS):
        offs_m = (sp * CHUNKS + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = offs_m < M
        b = (offs_m // HoWo).to(tl.int64)
        q = offs_m % HoWo
        oh = q // Wo
        ow = q % Wo
        ok_g = m_ok[:, None] & n_ok[None, :]
        if GATED:
            gov = _gated_grad(go_ptr, y_ptr, b[:, None], co[None, :], oh[:, None], ow[:, None], ok_g, C_HALF,
                              sgb, sgc, sgh, sgw, syb, syc, syh, syw, ACT, SLOPE, ACC)
        else:
            gov = tl.load(go_ptr + (b * sgb + oh * sgh + ow * sgw)[:, None] + co[None, :] * sgc,
                          mask=ok_g, other=0.0).to(ACC)
        if NEED_W:
            gsv = tl.load(gs_ptr + offs_m, mask=m_ok, other=0.0).to(ACC)
            ih = (oh * SH - PH)[:, None] + (r * DH)[None, :]
            iw = (ow * SW - PW)[:, None] + (s * DW)[None, :]
            ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            xv = tl.load(x_ptr + b[:, None] * sxb + (g * CG_IN + ci)[None, :] * sxc + ih * sxh + iw * sxw,
                         mask=ok, other=0.0)
            if MC:
                mv = tl.load(m_ptr + b[:, None] * smb + (g * CG_IN + ci)[None, :] * smc + ih * smh + iw * smw,
                             mask=ok, other=0.0)
            else:
                mv = tl.load(m_ptr + b[:, None] * smb + ih * smh + iw * smw, mask=ok, other=0.0)
            if LOWP:
                a = (xv.to(tl.float32) * mv.to(tl.float32)).to(x_ptr.dtype.element_ty)
                graw = (gov * gsv[:, None]).to(x_ptr.dtype.element_ty)
                acc = tl.dot(tl.trans(graw), a, acc, input_precision=PREC, out_dtype=ACC)
            else:
                a = xv.to(ACC) * mv.to(ACC)
                acc = tl.dot(tl.trans(gov * gsv[:, None]), a, acc, input_precision=PREC, out_dtype=ACC)
        if NEED_B:
            if do_b:
                if NM_MC:
                    nmv = tl.load(nm_ptr + (b * C_OUT * HoWo + q)[:, None] + co[None, :] * HoWo,
                                  mask=ok_g, other=0.0).to(ACC)
                    gb += tl.sum(gov * nmv, axis=0)
                else:
                    nmv = tl.load(nm_ptr + b * HoWo + q, mask=m_ok, other=0.0).to(ACC)
                    gb += tl.sum(gov * nmv[:, None], axis=0)
    if NEED_W:
        tl.store(gw_ptr + (sp * C_OUT + co)[:, None] * KG + offs_k[None, :], acc,
                 mask=n_ok[:, None] & k_ok[None, :])
    if NEED_B:
        if do_b:
            tl.store(gb_ptr + sp * C_OUT + co, gb, mask=n_ok)


# ------------------------------------------------------------------ launch configuration

def _gpu_configs():
    cfgs = []
    for bm, bn, bk, warps, stages in ((128, 64, 32, 4, 3), (64, 64, 32, 4, 4), (128, 128, 32, 8, 3),
                                      (64, 32, 64, 4, 3)):
        cfgs.append(triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages))
    return cfgs


_TUNED = {}
# largest (M, N, K) blocks under the interpreter; tests shrink them to run many programs and loop trips
INTERP_CAPS = (512, 64, 512)


def _tuned(kernel):
    """The autotuned variant of a GEMM kernel (GPU only; keyed on the channel counts and K)."""
    if kernel not in _TUNED:
        _TUNED[kernel] = triton.autotune(_gpu_configs(), key=["CG_IN", "CG_OUT", "KG"])(kernel)
    return _TUNED[kernel]


def _launch_gemm(kernel, m_size, n_size, k_size, groups, dtype, args, consts):
    """Launches a (M tiles, groups * N tiles) implicit GEMM with interpreter, fp64 or autotuned blocks."""
    if triton_interpreter():
        # one program and one K trip for test-sized problems, big tiles otherwise: the interpreter's cost is
        # per program and per loop trip, numpy's per element is small
        cap_m, cap_n, cap_k = INTERP_CAPS
        blocks = dict(BLOCK_M=pow2(m_size, 16, cap_m), BLOCK_N=pow2(n_size, 16, cap_n), BLOCK_K=pow2(k_size, 16, cap_k))
    elif dtype == torch.float64:
        blocks = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16)   # gradcheck only: small, no autotuning
    else:
        blocks = None
    if blocks is not None:
        grid = (triton.cdiv(m_size, blocks["BLOCK_M"]), groups * triton.cdiv(n_size, blocks["BLOCK_N"]))
        kernel[grid](*args, **consts, **blocks, num_warps=4)
    else:
        grid = lambda meta: (triton.cdiv(m_size, meta["BLOCK_M"]), groups * triton.cdiv(n_size, meta["BLOCK_N"]))  # noqa: E731
        _tuned(kernel)[grid](*args, **consts)


def _dot_precision(dtype):
    """fp32 tiles: three tf32 products (tf32x3, about fp32's accuracy; one tf32 pass misses SPEC's 5e-4 at a
    training size: 1.2e-3 was measured on an H100); fp64 and the interpreter: exact products."""
    if triton_interpreter() or dtype == torch.float64:
        return "ieee"
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _lowp(dtype):
    """Feed bf16/fp16 tiles to tl.dot in their own dtype (fp32 accumulation). The interpreter has no bf16
    arithmetic (numpy has no bf16): there bf16 tiles are converted to fp32 first, while fp16 runs the GPU's
    16-bit path, which is how CPU tests check it."""
    return dtype == torch.float16 or (dtype == torch.bfloat16 and not triton_interpreter())


def _geometry(x, weight, stride, padding, dilation):
    b, c_in, h, w = x.shape
    kh, kw = weight.shape[-2:]
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return b, c_in, h, w, kh, kw, ho, wo


def _conv_ints(kh, kw, stride, padding, dilation):
    return (kh * kw, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


# ------------------------------------------------------------------ registered kernels

@register_kernel("partial_conv2d.forward", "triton")
@no_autocast
def forward(x, mask, weight, bias, stride, padding, dilation, groups, multi_channel):
    """Returns (out, new_mask, grad_scale) like the composite kernel."""
    return _forward(x, mask, weight, bias, stride, padding, dilation, groups, multi_channel)


@register_kernel("gated_partial_conv2d.forward", "triton")
@no_autocast
def gated_forward(x, mask, weight, bias, stride, padding, dilation, groups, activation, negative_slope):
    """Partial conv with 2*C_out outputs and the gating fused into its epilogue (groups == 1; with groups
    the feature and gate channels of an output live in different groups: then the two kernels run one after
    the other). Returns (out, new_mask, y, grad_scale); y is the partial conv output, for the backward."""
    if groups != 1:
        from . import gated_activation
        y, new_mask, grad_scale = _forward(x, mask, weight, bias, stride, padding, dilation, groups, False)
        return gated_activation.forward(y, activation, negative_slope), new_mask, y, grad_scale
    return _forward(x, mask, weight, bias, stride, padding, dilation, groups, False, activation, negative_slope)


_ACT = {"none": 0, "elu": 1, "leaky_relu": 2, "relu": 3}


def _forward(x, mask, weight, bias, stride, padding, dilation, groups, multi_channel, activation=None,
             negative_slope=0.0):
    b, c_in, h, w, kh, kw, ho, wo = _geometry(x, weight, stride, padding, dilation)
    gated = activation is not None
    c_out = weight.shape[0] // 2 if gated else weight.shape[0]   # gated: out channels, half the weight's
    acc = acc_dtype(x.dtype)
    fmt = out_format(x)
    cg_in, cg_out = c_in // groups, c_out // groups
    out = out_buffer((b, c_out, ho, wo), x.dtype, x.device, fmt)
    y = out_buffer((b, 2 * c_out, ho, wo), x.dtype, x.device, fmt) if gated else None
    new_mask = out_buffer((b, c_out if multi_channel else 1, ho, wo), x.dtype, x.device)
    grad_scale = torch.empty((b, 1, ho, wo), dtype=acc, device=x.device)
    m_size = b * ho * wo
    if m_size == 0 or c_out == 0:
        res = (finish(out, x.dtype).zero_(), finish(new_mask, x.dtype).zero_(), grad_scale.zero_())
        return res[:2] + (finish(y, x.dtype).zero_(),) + res[2:] if gated else res
    activation = activation or "none"
    ints = _conv_ints(kh, kw, stride, padding, dilation)
    # 1. mask window sums
    msum = torch.empty(m_size, dtype=acc, device=x.device)
    taps = mask.shape[1] * kh * kw
    block_p = pow2(m_size, 16, INTERP_CAPS[0]) if triton_interpreter() else 128
    block_t = pow2(taps, 1, INTERP_CAPS[2] // 8) if triton_interpreter() else min(pow2(taps), 16)
    _msum_kernel[(triton.cdiv(m_size, block_p),)](
        mask, msum, m_size, ho * wo, wo, h, w, taps, *ints, *mask.stride(),
        ACC=acc_tl(x.dtype), BLOCK_P=block_p, BLOCK_T=block_t, num_warps=4)
    # 2. the implicit GEMM with the epilogue
    winsize = kh * kw * (c_in if multi_channel else 1)
    args = (x, mask, weight, bias if bias is not None else x, msum, out, new_mask, grad_scale,
            y if gated else out, m_size, ho * wo, wo, h, w, cg_in, cg_out, c_out, cg_in * kh * kw, *ints, winsize,
            *x.stride(), *mask.stride(), *weight.stride(), *out.stride(), *(y if gated else out).stride())
    consts = dict(HAS_BIAS=bias is not None, MC=bool(multi_channel), LOWP=_lowp(x.dtype), ACC=acc_tl(x.dtype),
                  PREC=_dot_precision(x.dtype),
                  GATED=gated, ACT=_ACT[activation], SLOPE=float(negative_slope), EPS=MASK_EPS)
    _launch_gemm(_fwd_kernel, m_size, cg_out, cg_in * kh * kw, groups, x.dtype, args, consts)
    out, new_mask = finish(out, x.dtype), finish(new_mask, x.dtype)
    if multi_channel:  # the kernel writes the planes NCHW; the op's contract is x's layout
        new_mask = new_mask.contiguous(memory_format=fmt)
    if gated:
        return out, new_mask, finish(y, x.dtype), grad_scale
    return out, new_mask, grad_scale


def _dw_blocks(m_size, cg_out, kg, dtype):
    if triton_interpreter():
        return pow2(m_size, 16, 2 * INTERP_CAPS[0]), pow2(cg_out, 16, INTERP_CAPS[1]), pow2(kg, 16, INTERP_CAPS[2])
    if dtype == torch.float64:
        return 32, 32, 16
    return 64, 64, 64


@register_kernel("partial_conv2d.backward", "triton")
@no_autocast
def backward(grad_out, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups,
             need_x, need_w, need_b):
    return _backward(grad_out, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups,
                     need_x, need_w, need_b)


@register_kernel("gated_partial_conv2d.backward", "triton")
@no_autocast
def gated_backward(grad_out, x, mask, weight, grad_scale, new_mask, y, stride, padding, dilation, groups,
                   activation, negative_slope, need_x, need_w, need_b):
    """The gating's derivative is formed inside the dx / dW loads from grad_out and y (groups == 1); with
    groups the gated gradient is computed first (its feature and gate channels lie in different groups)."""
    if groups != 1:
        from . import gated_activation
        grad_y = gated_activation.backward(grad_out, y, activation, negative_slope)
        return _backward(grad_y, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups,
                         need_x, need_w, need_b)
    return _backward(grad_out, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups,
                     need_x, need_w, need_b, gated=(y, activation, negative_slope))


def _backward(grad_out, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups,
              need_x, need_w, need_b, gated=None):
    b, c_in, h, w, kh, kw, ho, wo = _geometry(x, weight, stride, padding, dilation)
    c_out = weight.shape[0]
    cg_in, cg_out = c_in // groups, c_out // groups
    acc = acc_dtype(x.dtype)
    ints = _conv_ints(kh, kw, stride, padding, dilation)
    lowp = _lowp(x.dtype)
    grad_scale, new_mask = grad_scale.contiguous(), new_mask.contiguous()
    if gated is not None:   # grad_out is the gating's (C_out / 2 channels), y the conv output it gates
        y, activation, slope = gated
        gate_args, gate_consts = (y, c_out // 2), dict(GATED=True, ACT=_ACT[activation], SLOPE=float(slope))
        y_strides = y.stride()
    else:
        gate_args, gate_consts = (grad_out, 0), dict(GATED=False, ACT=0, SLOPE=0.0)
        y_strides = grad_out.stride()
    gx = gw = gb = None
    if need_x:
        gx = out_buffer(x.shape, x.dtype, x.device, out_format(x))
        m_size = b * h * w
        if m_size and c_in:
            args = (grad_out, grad_scale, weight, mask, gx, gate_args[0], m_size, h * w, w, ho, wo, cg_in, cg_out,
                    cg_out * kh * kw, *ints, gate_args[1], *grad_out.stride(), *weight.stride(), *mask.stride(),
                    *gx.stride(), *y_strides)
            consts = dict(MC=mask.shape[1] != 1, LOWP=lowp, ACC=acc_tl(x.dtype), PREC=_dot_precision(x.dtype),
                          **gate_consts)
            _launch_gemm(_dx_kernel, m_size, cg_in, cg_out * kh * kw, groups, x.dtype, args, consts)
        gx = finish(gx, x.dtype)
    if need_w or need_b:
        m_size = b * ho * wo
        kg = cg_in * kh * kw
        bm, bn, bk = _dw_blocks(m_size, cg_out, kg, x.dtype)
        n_tiles = triton.cdiv(cg_out, bn)
        k_tiles = triton.cdiv(kg, bk) if need_w else 1
        chunks = max(1, triton.cdiv(m_size, bm))
        tiles = n_tiles * k_tiles * groups
        # deterministic split of the M loop: enough programs to fill the GPU, reduced by torch.sum below
        split = max(1, min(chunks, target_programs() // max(tiles, 1)))
        per = triton.cdiv(chunks, split)
        split = triton.cdiv(chunks, per)
        gw_part = torch.zeros((split, c_out, kg) if need_w else (1,), dtype=acc, device=x.device)
        gb_part = torch.zeros((split, c_out) if need_b else (1,), dtype=acc, device=x.device)
        _dw_kernel[(n_tiles * k_tiles, groups, split)](
            grad_out, grad_scale, new_mask, x, mask, gw_part, gb_part, gate_args[0],
            m_size, ho * wo, wo, h, w, cg_in, cg_out, c_out, kg, *ints, per, gate_args[1],
            *grad_out.stride(), *x.stride(), *mask.stride(), *y_strides,
            NEED_W=bool(need_w), NEED_B=bool(need_b), MC=mask.shape[1] != 1, NM_MC=new_mask.shape[1] != 1,
            LOWP=lowp, ACC=acc_tl(x.dtype), PREC=_dot_precision(x.dtype), **gate_consts, BLOCK_M=bm, BLOCK_N=bn,
            BLOCK_K=bk, num_warps=4)
        if need_w:
            gw = (gw_part[0] if split == 1 else gw_part.sum(0)).view(c_out, cg_in, kh, kw).to(weight.dtype)
        if need_b:
            gb = (gb_part[0] if split == 1 else gb_part.sum(0)).to(x.dtype)
    return gx, gw, gb

