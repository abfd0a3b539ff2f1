"""Masked patch attention (SPEC §5) as flash-attention kernels: the N x N score matrix never exists.

    out = fold(softmax(SCALE * Theta Phi^T) G) * (1 - mask),  p x p non-overlapping patches, zero-padded maps

The operands the inner loops sweep (K and V in the forward and dQ kernels, Q and dO' in the dK/dV kernel) are
read from packed patch rows: (B, N, C p^2) copies of the zero-padded maps, feature e = (c, ky, kx) as F.unfold
orders it (reference.to_patches), so each tile is a coalesced load of whole rows. Gathering them from the NCHW
maps by index math instead (channel stride H*W inside every patch vector) cost a load per element spread over
many cache lines, repeated for every query block, and its [rows, d] offset tiles spilled registers (ptxas: 8.7 KB
of spill stores in the dK/dV kernel at fp32, d = 256). The packs are the size of the inputs (O(B N d), never
N^2). Tiles read once per program (a program's own queries or keys) and the outputs still go straight to and
from the NCHW maps by index math. The feature dims d = C * p^2 are padded to a power of two (>= 16, the
smallest tl.dot) and masked.

Skipping: a query patch with no hole pixel (1 - mask == 0 on all its pixels inside H x W; the padding does
not count) has a zero output and contributes to no gradient. The host lists the active query patches of each
batch first (a stable sort of the activity flags, no host synchronisation) with their count, so programs
walk only the active queries: query-block programs past the count do no work, and the dK/dV programs loop
over the active query blocks only. Skipped queries keep lse = +inf (as the CPU kernel), and their output and
d_theta rows stay zero.

Forward: one program per (block of BLOCK_M active queries, batch); Q stays in registers, the loop over key
blocks of BLOCK_N patches loads K (phi) and V (g) rows, scores with tl.dot, online softmax, acc += P V. The
output is stored folded back into (B, Cv, H, W) with the (1 - mask) factor applied; lse = m + log(l).

Backward (flash-attention-2, recomputing P = exp(SCALE q.k - lse) from the saved lse). With dO' = dO * (1 - mask)
(the gradient reaching the unmasked output O = P V) and D_i = sum_j P_ij dP_ij = <dO'_i, O_i>, dP = dO' V^T:
    dV = P^T dO',   dS = P * (dP - D) * SCALE,   dQ = dS K,   dK = dS^T Q.
D comes from the forward's saved output: out = O * (1 - mask), so D_i = sum of dO * out over the query
patch's pixels: `_dsum_kernel` reads dO and out once from the maps, in their dtype. The dQ kernel (per query
block) sweeps the keys once for dQ; the dK/dV kernel (per key block) loops over the active query blocks. Every
output pixel has exactly one writer (patches do not overlap): plain stores, no atomics, and a fixed
summation order.

Memory: the packed rows (the size of theta, phi, g, and of grad_out in the backward) and O(B * N) for lse, D
and the active-query list, besides the inputs and gradients.

Precision: accumulation in fp32 (fp64 for fp64). 16-bit inputs stay 16-bit end to end: packed in their dtype
(dO' too: grad_out * (1 - mask) rounded once, as a 16-bit autograd takes it), fed to tl.dot as they are
(tensor cores, fp32 accumulation: "LOWP", read from the packs' dtype), with the probabilities and dS rounded
to that dtype for the P V, P^T dO', dS K and dS^T Q products, as flash-attention does; scores, the softmax
statistics, D and every accumulator stay fp32. Compared with converting the tiles to fp32 first (tf32 dots)
this halves the staged tiles' shared memory (offline sm_90 compile at d = 128, 64 x 64 tiles: fwd / dq / dkdv
96 / 160 / 128 KiB before, 48 / 64 / 48 KiB now). The interpreter has no bf16 arithmetic: there bf16 rows are
packed in fp32 and take the fp32 path (fp16, which numpy has, runs the LOWP path and is what CPU tests check).
Scalars that must be exact in fp64 (SCALE) are constexpr: Triton passes runtime floats as fp32.
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .._dispatch import register_kernel, triton_interpreter
from ..composite import patch_attention as _composite
from ..composite._common import acc_dtype, no_autocast
from ..reference.patch_attention import pad_to_multiple, to_patches
from ._common import acc_tl, finish, out_buffer, pow2


@triton.jit
def _patch_offsets(idx, valid, C, H, W, NPW, P: tl.constexpr, D: tl.constexpr):
    """A [len(idx), D] tile of patches `idx` of a (C, H, W) map: channel offsets [D], pixel offsets
    [len(idx), D] (y * W + x) and the load mask (valid rows, e < C p^2, inside H x W: zero padding)."""
    py = idx // NPW
    px = idx % NPW
    e = tl.arange(0, D)
    c = e // (P * P)
    ky = (e // P) % P
    kx = e % P
    y = py[:, None] * P + ky[None, :]
    x = px[:, None] * P + kx[None, :]
    m = valid[:, None] & (c < C)[None, :] & (y < H) & (x < W)
    return c.to(tl.int64) * H * W, y * W + x, m


@triton.jit
def _load_rows(ptr, b, rows, valid, N, DR, D: tl.constexpr, DT: tl.constexpr):
    """Rows `rows` of batch b of a packed (B, N, DR) patch matrix as a [len(rows), D] tile of dtype DT (columns
    >= DR zero): the dots' operand dtype, 16-bit as stored for 16-bit inputs (converted in registers only)."""
    e = tl.arange(0, D)
    offs = (b * N + rows.to(tl.int64))[:, None] * DR + e[None, :]
    return tl.load(ptr + offs, mask=valid[:, None] & (e < DR)[None, :], other=0.0).to(DT)


@triton.jit
def _active_queries(idx_ptr, b, m0, cnt, N, BLOCK_M: tl.constexpr):
    """The patch indices of active queries m0 .. m0 + BLOCK_M of batch b, and which of them exist (< cnt)."""
    rows = m0 + tl.arange(0, BLOCK_M)
    rvalid = rows < cnt
    return tl.load(idx_ptr + b * N + rows, mask=rvalid, other=0), rvalid


@triton.jit
def _fwd_kernel(qp_ptr, kp_ptr, vp_ptr, mask_ptr, idx_ptr, cnt_ptr, out_ptr, lse_ptr, Ck, Cv, H, W, NPW, N,
                SCALE: tl.constexpr, P: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                DK: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """qp, kp, vp: packed patch rows (B, N, C p^2) of theta, phi, g. 16-bit packs (LOWP) feed the dots in their
    own dtype (fp32 accumulation); the probabilities are rounded to it for P V, as flash-attention does."""
    LOWP: tl.constexpr = qp_ptr.dtype.element_ty.primitive_bitwidth == 16
    DT: tl.constexpr = qp_ptr.dtype.element_ty if LOWP else ACC
    b = tl.program_id(1).to(tl.int64)
    m0 = tl.program_id(0) * BLOCK_M
    hw = H * W
    dkr, dvr = Ck * P * P, Cv * P * P
    cnt = tl.load(cnt_ptr + b)
    qidx, rvalid = _active_queries(idx_ptr, b, m0, cnt, N, BLOCK_M)
    q = _load_rows(qp_ptr, b, qidx, rvalid, N, dkr, DK, DT)
    m_i = tl.full([BLOCK_M], -float("inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, DV], ACC)
    kv_end = tl.where(m0 < cnt, N, 0)   # a block past the active queries does no work
    for n0 in range(0, kv_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cvalid = cols < N
        k = _load_rows(kp_ptr, b, cols, cvalid, N, dkr, DK, DT)
        v = _load_rows(vp_ptr, b, cols, cvalid, N, dvr, DV, DT)
        s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=ACC) * SCALE
        s = tl.where(cvalid[None, :], s, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))     # finite: column n0 is a real key
        alpha = tl.exp(m_i - m_new)                     # 0 on the first key block (m_i = -inf)
        pr = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(pr, axis=1)
        acc = acc * alpha[:, None] + tl.dot(pr.to(DT), v, input_precision=PREC, out_dtype=ACC)
        m_i = m_new
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    tl.store(lse_ptr + b * N + qidx, m_i + tl.log(l_safe), mask=rvalid)
    oc, opix, om = _patch_offsets(qidx, rvalid, Cv, H, W, NPW, P, DV)
    keep = 1.0 - tl.load(mask_ptr + b * hw + opix, mask=om, other=1.0).to(ACC)
    o = acc / l_safe[:, None] * keep
    tl.store(out_ptr + b * Cv * hw + oc[None, :] + opix, o.to(out_ptr.dtype.element_ty), mask=om)


@triton.jit
def _dsum_kernel(go_ptr, o_ptr, dsum_ptr, Cv, H, W, NPW, N,
                 P: tl.constexpr, ACC: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr):
    """dsum[b, i] = D_i = <dO'_i, O_i> = sum of grad_out * out over patch i's pixels (out = O (1 - mask)), read
    straight from the (B, Cv, H, W) maps in their dtype, products and sum in ACC."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = rows < N
    oc, opix, om = _patch_offsets(rows, valid, Cv, H, W, NPW, P, DV)
    offs = b * Cv * H * W + oc[None, :] + opix
    go = tl.load(go_ptr + offs, mask=om, other=0.0).to(ACC)
    o = tl.load(o_ptr + offs, mask=om, other=0.0).to(ACC)
    tl.store(dsum_ptr + b * N + rows, tl.sum(go * o, axis=1), mask=valid)


@triton.jit
def _bwd_dq_kernel(qp_ptr, kp_ptr, vp_ptr, dop_ptr, idx_ptr, cnt_ptr, lse_ptr, dsum_ptr, dq_ptr,
                   Ck, Cv, H, W, NPW, N,
                   SCALE: tl.constexpr, P: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                   DK: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per block of active queries: dQ_i = sum_j dS_ij K_j, stored into d_theta. qp, kp, vp, dop: packed rows
    of theta, phi, g and dO' = grad_out * (1 - mask); dsum (B, N): D_i per query patch. LOWP: the dots take
    16-bit operands (dS rounded to it), fp32 accumulation."""
    LOWP: tl.constexpr = qp_ptr.dtype.element_ty.primitive_bitwidth == 16
    DT: tl.constexpr = qp_ptr.dtype.element_ty if LOWP else ACC
    b = tl.program_id(1).to(tl.int64)
    m0 = tl.program_id(0) * BLOCK_M
    hw = H * W
    dkr, dvr = Ck * P * P, Cv * P * P
    cnt = tl.load(cnt_ptr + b)
    qidx, rvalid = _active_queries(idx_ptr, b, m0, cnt, N, BLOCK_M)
    q = _load_rows(qp_ptr, b, qidx, rvalid, N, dkr, DK, DT)
    do = _load_rows(dop_ptr, b, qidx, rvalid, N, dvr, DV, DT)
    lse = tl.load(lse_ptr + b * N + qidx, mask=rvalid, other=float("inf")).to(ACC)
    dsum = tl.load(dsum_ptr + b * N + qidx, mask=rvalid, other=0.0).to(ACC)
    kv_end = tl.where(m0 < cnt, N, 0)
    dq = tl.zeros([BLOCK_M, DK], ACC)
    for n0 in range(0, kv_end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cvalid = cols < N
        k = _load_rows(kp_ptr, b, cols, cvalid, N, dkr, DK, DT)
        v = _load_rows(vp_ptr, b, cols, cvalid, N, dvr, DV, DT)
        s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=ACC) * SCALE
        pr = tl.where(cvalid[None, :], tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC, out_dtype=ACC)
        ds = pr * (dp - dsum[:, None]) * SCALE
        dq += tl.dot(ds.to(DT), k, input_precision=PREC, out_dtype=ACC)
    qc, qpix, qm = _patch_offsets(qidx, rvalid, Ck, H, W, NPW, P, DK)
    tl.store(dq_ptr + b * Ck * hw + qc[None, :] + qpix, dq.to(dq_ptr.dtype.element_ty), mask=qm)


@triton.jit
def _bwd_dkdv_kernel(qp_ptr, kp_ptr, vp_ptr, dop_ptr, idx_ptr, cnt_ptr, lse_ptr, dsum_ptr, dk_ptr, dv_ptr,
                     Ck, Cv, H, W, NPW, N,
                     SCALE: tl.constexpr, P: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
                     DK: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per block of key patches (all of them): dV_j = sum_i P_ij dO'_i, dK_j = sum_i dS_ij Q_i over the active
    queries; every key pixel is written (zeros where no query is active). qp, kp, vp, dop: packed rows of
    theta, phi, g and dO' = grad_out * (1 - mask). LOWP: 16-bit dot operands (P and dS rounded to it)."""
    LOWP: tl.constexpr = qp_ptr.dtype.element_ty.primitive_bitwidth == 16
    DT: tl.constexpr = qp_ptr.dtype.element_ty if LOWP else ACC
    b = tl.program_id(1).to(tl.int64)
    n0 = tl.program_id(0) * BLOCK_N
    hw = H * W
    dkr, dvr = Ck * P * P, Cv * P * P
    cnt = tl.load(cnt_ptr + b)
    cols = n0 + tl.arange(0, BLOCK_N)
    cvalid = cols < N
    k = _load_rows(kp_ptr, b, cols, cvalid, N, dkr, DK, DT)
    v = _load_rows(vp_ptr, b, cols, cvalid, N, dvr, DV, DT)
    dk = tl.zeros([BLOCK_N, DK], ACC)
    dv = tl.zeros([BLOCK_N, DV], ACC)
    for m0 in range(0, cnt, BLOCK_M):
        qidx, rvalid = _active_queries(idx_ptr, b, m0, cnt, N, BLOCK_M)
        q = _load_rows(qp_ptr, b, qidx, rvalid, N, dkr, DK, DT)
        do = _load_rows(dop_ptr, b, qidx, rvalid, N, dvr, DV, DT)
        lse = tl.load(lse_ptr + b * N + qidx, mask=rvalid, other=float("inf")).to(ACC)
        dsum = tl.load(dsum_ptr + b * N + qidx, mask=rvalid, other=0.0).to(ACC)
        s = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=ACC) * SCALE
        pr = tl.where(rvalid[:, None], tl.exp(s - lse[:, None]), 0.0)
        dv += tl.dot(tl.trans(pr.to(DT)), do, input_precision=PREC, out_dtype=ACC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC, out_dtype=ACC)
        ds = pr * (dp - dsum[:, None]) * SCALE
        dk += tl.dot(tl.trans(ds.to(DT)), q, input_precision=PREC, out_dtype=ACC)
    kc, kpix, km = _patch_offsets(cols, cvalid, Ck, H, W, NPW, P, DK)
    tl.store(dk_ptr + b * Ck * hw + kc[None, :] + kpix, dk.to(dk_ptr.dtype.element_ty), mask=km)
    vc, vpix, vm = _patch_offsets(cols, cvalid, Cv, H, W, NPW, P, DV)
    tl.store(dv_ptr + b * Cv * hw + vc[None, :] + vpix, dv.to(dv_ptr.dtype.element_ty), mask=vm)


# ------------------------------------------------------------------------------------------- host side

def _config(dk, dv, dtype):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages, dot precision). The interpreter gets small fixed blocks (every
    program and every op costs Python time; 16 keeps several blocks in small tests).

    GPU (not yet timed on a GPU; sized so the kernels fit in the 227 KiB of shared memory of an sm_90 block and
    spill little, from offline sm_90 compiles: `python bench/triton_resources.py` prints registers, spills and
    shared memory per kernel): 16-bit inputs with d <= 128 run the usual 64 x 64 flash tiles, 2 stages, 8 warps
    (4 warps spilled 0.6 / 1.0 / 1.6 KB in fwd / dq / dkdv, 8 warps 0 / 0.3 / 0.6); fp32 goes through 3-pass
    tf32 dots whose staging costs more shared memory: 32 x 32, 8 warps; wider patch vectors (d = C p^2 up to
    512, the model's default 128 channels at p = 2) shrink the tiles (fp32 d = 256: 16 x 16, 8 warps, 1 stage);
    fp64 (a test dtype) runs 16 x 16.

    d > 256 (16 x 16, 8 warps, 1 stage): at fp32 the 3-pass tf32 dots made ptxas give up on the backward (32
    registers, then 9.9 / 14.3 KB of spill stores in dq / dkdv, and 2.3 KB in fwd), so fp32 takes the ieee (FMA)
    dot there, which spills nothing (fwd / dq / dkdv: 156 / 152 / 162 registers, 0 B); 16-bit inputs spill 0 B
    with 1 stage (0.5 KB in dkdv with 2). The 16-bit figures date from when 16-bit tiles were converted to fp32
    before the dots; now that they go in as they are (half the shared memory), their configs are untuned."""
    if triton_interpreter():
        return 16, 16, 1, 1, "ieee"
    widest = max(dk, dv)
    if dtype == torch.float64:
        block, warps, stages = 16, 4, 2 if widest <= 128 else 1
    elif dtype == torch.float32:
        block, warps, stages = (32, 8, 2) if widest <= 128 else (16, 8, 1)
    elif widest <= 128:
        block, warps, stages = 64, 8, 2
    else:
        block, warps, stages = (32, 8, 2) if widest <= 256 else (16, 8, 1)
    # fp32 inputs: 3-pass tf32 (about fp32 accuracy; plain tf32 truncation would eat most of the 5e-4 budget),
    # or the exact ieee dot where tf32x3 spills (d > 256); bf16/fp16 inputs go to the dots in their own dtype
    # (the dot precision does not apply to them); fp64 has only the ieee path
    if dtype == torch.float32:
        prec = "tf32x3" if widest <= 256 else "ieee"
    else:
        prec = "ieee" if dtype == torch.float64 else "tf32"
    return block, block, warps, stages, prec


def _too_wide(dk, dv, dtype):
    """fp64 with d > 256 does not fit in shared memory even at 16 x 16 tiles (dkdv: 256 KiB at d = 512):
    on GPU that (test-only) case runs the composite kernels."""
    return dtype == torch.float64 and max(dk, dv) > 256 and not triton_interpreter()


def _geometry(theta, p):
    h, w = theta.shape[-2:]
    nph, npw = -(-h // p), -(-w // p)
    return h, w, nph, npw, nph * npw


def _active(mask, p, nph, npw, acc):
    """(idx (B,N) int32: the active query patches of each batch first, in ascending order; cnt (B,) int32)."""
    b, _, h, w = mask.shape
    keep = F.pad(1 - mask.to(acc), (0, npw * p - w, 0, nph * p - h))  # padding is not a hole
    act = keep.ne(0).reshape(b, nph, p, npw, p).any(4).any(2).reshape(b, nph * npw)
    idx = torch.argsort((~act).to(torch.uint8), dim=1, stable=True).to(torch.int32).contiguous()
    return idx, act.sum(1, dtype=torch.int32)


def _pack(x, p):
    """(B, C, H, W) -> the (B, N, C p^2) contiguous patch rows of the zero-padded map, in x's dtype (the dots'
    operand dtype: 16-bit packs make the kernels' LOWP path). The interpreter cannot compute with bf16 (numpy has
    no bf16): there bf16 rows are packed in fp32, exactly, and take the fp32 path."""
    rows = to_patches(pad_to_multiple(x, p), p)
    if rows.dtype == torch.bfloat16 and triton_interpreter():
        rows = rows.float()
    return rows.contiguous()


def _zeros(shape, dtype, device):
    return out_buffer(shape, dtype, device).zero_()


@register_kernel("patch_attention.forward", "triton")
@no_autocast
def forward(theta, phi, g, mask, patch_size, scale):
    p = int(patch_size)
    if _too_wide(theta.shape[1] * p * p, g.shape[1] * p * p, theta.dtype):
        return _composite.forward(theta, phi, g, mask, patch_size, scale)
    mask = mask.contiguous()  # the kernel reads it by index; theta, phi, g go in packed
    bsz, ck, cv = theta.shape[0], theta.shape[1], g.shape[1]
    h, w, nph, npw, n = _geometry(theta, p)
    acc = acc_dtype(theta.dtype)
    out = _zeros(g.shape, g.dtype, g.device)           # skipped (hole-free) patches stay 0
    lse = torch.full((bsz, n), float("inf"), dtype=acc, device=theta.device)
    if out.numel() == 0 or lse.numel() == 0:
        return finish(out, g.dtype), lse
    idx, cnt = _active(mask, p, nph, npw, acc)
    dk, dv = pow2(ck * p * p, 16), pow2(cv * p * p, 16)
    bm, bn, warps, stages, prec = _config(dk, dv, theta.dtype)
    _fwd_kernel[(triton.cdiv(n, bm), bsz)](
        _pack(theta, p), _pack(phi, p), _pack(g, p), mask, idx, cnt, out, lse, ck, cv, h, w, npw, n,
        SCALE=float(scale), P=p,
        ACC=acc_tl(theta.dtype), PREC=prec, DK=dk, DV=dv, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps,
        num_stages=stages)
    return finish(out, g.dtype), lse


@register_kernel("patch_attention.backward", "triton")
@no_autocast
def backward(grad_out, theta, phi, g, mask, out, lse, patch_size, scale):
    p = int(patch_size)
    if _too_wide(theta.shape[1] * p * p, g.shape[1] * p * p, theta.dtype):
        return _composite.backward(grad_out, theta, phi, g, mask, out, lse, patch_size, scale)
    # the inputs reach the kernels packed, and mask only torch ops: no layout is required here
    grad_out, out = grad_out.to(g.dtype), out.to(g.dtype)
    bsz, ck, cv = theta.shape[0], theta.shape[1], g.shape[1]
    h, w, nph, npw, n = _geometry(theta, p)
    acc = acc_dtype(theta.dtype)
    d_theta = _zeros(theta.shape, theta.dtype, theta.device)   # rows of skipped queries stay 0
    d_phi = out_buffer(phi.shape, phi.dtype, phi.device)        # every key pixel is written
    d_g = out_buffer(g.shape, g.dtype, g.device)
    if bsz * n == 0:
        return finish(d_theta, theta.dtype), finish(d_phi.zero_(), phi.dtype), finish(d_g.zero_(), g.dtype)
    lse = lse.to(acc).contiguous()
    idx, cnt = _active(mask, p, nph, npw, acc)
    dk, dv = pow2(ck * p * p, 16), pow2(cv * p * p, 16)
    bm, bn, warps, stages, prec = _config(dk, dv, theta.dtype)
    common = dict(SCALE=float(scale), P=p, ACC=acc_tl(theta.dtype), PREC=prec, DK=dk, DV=dv, BLOCK_M=bm,
                  BLOCK_N=bn, num_warps=warps, num_stages=stages)
    qp, kp, vp = _pack(theta, p), _pack(phi, p), _pack(g, p)
    # dO' = dO (1 - mask), what reaches O = P V, packed in the inputs' dtype (one rounding of the product, as a
    # 16-bit reference takes it; no fp32 copy of grad_out)
    dop = _pack(grad_out * (1 - mask.to(grad_out.dtype)), p)
    # D_i = <dO', O_i> = <dO, out> over patch i's pixels, from the 16-bit maps with ACC products and sums
    dsum = torch.empty((bsz, n), dtype=acc, device=theta.device)
    block_d = pow2(n, 1, 64) if triton_interpreter() else pow2(4096 // dv, 1, 64)
    _dsum_kernel[(triton.cdiv(n, block_d), bsz)](
        grad_out.contiguous(), out.contiguous(), dsum, cv, h, w, npw, n, P=p, ACC=acc_tl(theta.dtype), DV=dv,
        BLOCK_M=block_d, num_warps=4)
    _bwd_dq_kernel[(triton.cdiv(n, bm), bsz)](
        qp, kp, vp, dop, idx, cnt, lse, dsum, d_theta, ck, cv, h, w, npw, n, **common)
    _bwd_dkdv_kernel[(triton.cdiv(n, bn), bsz)](
        qp, kp, vp, dop, idx, cnt, lse, dsum, d_phi, d_g, ck, cv, h, w, npw, n, **common)
    return finish(d_theta, theta.dtype), finish(d_phi, phi.dtype), finish(d_g, g.dtype)
