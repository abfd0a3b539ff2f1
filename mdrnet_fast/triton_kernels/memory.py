"""Cosine memory (SPEC §4). Read: one program per (sample, block) query walks C in blocks to get the dot
products and norms against the block's m slots, takes the softmax over the slots, then walks C again for the
weighted sum; the backward does the same two walks per query. Update: one program per query takes the
argmax slot (lowest slot on ties), then one program per (block, slots, channels) tile sums the chosen values
over the batch in a fixed order and applies the EMA, so the result is deterministic.

Scalars that must be exact in fp64 (tau, alpha) are constexpr: Triton passes runtime floats as fp32.
"""
import torch
import triton
import triton.language as tl

from .._dispatch import register_kernel
from ..composite._common import acc_dtype, no_autocast
from ..reference.memory import COS_EPS
from ._common import acc_tl, finish, num_warps, out_buffer, pow2, triton_interpreter


@triton.jit
def _read_fwd_kernel(q_ptr, mem_ptr, out_ptr, attn_ptr, slot_ptr, n, m, C,
                     ARGMAX: tl.constexpr, TAU: tl.constexpr, EPS: tl.constexpr, ACC: tl.constexpr,
                     M_PAD: tl.constexpr, BLOCK_C: tl.constexpr):
    """attn[b,i,:] = softmax(cos / TAU) and out[b,i,:] = attn @ mem[i]; with ARGMAX only the slot of the
    largest cosine (lowest on ties) is stored, -1 where present (read through slot_ptr) is False."""
    bi = tl.program_id(0).to(tl.int64)   # b * n + i
    i = bi % n
    js = tl.arange(0, M_PAD)
    jmask = js < m
    mem_rows = mem_ptr + (i * m + js[:, None]) * C
    dots = tl.full([M_PAD], 0.0, ACC)
    mn2 = tl.full([M_PAD], 0.0, ACC)
    qn2 = tl.full([BLOCK_C], 0.0, ACC)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < C
        qv = tl.load(q_ptr + bi * C + cs, mask=cmask, other=0.0).to(ACC)
        mv = tl.load(mem_rows + cs[None, :], mask=jmask[:, None] & cmask[None, :], other=0.0).to(ACC)
        dots += tl.sum(mv * qv[None, :], axis=1)
        mn2 += tl.sum(mv * mv, axis=1)
        qn2 += qv * qv
    qn = tl.maximum(tl.sqrt(tl.sum(qn2, axis=0)), EPS)
    cos = dots / (qn * tl.maximum(tl.sqrt(mn2), EPS))
    if ARGMAX:
        cos = tl.where(jmask, cos, -float("inf"))
        best = tl.min(tl.where(cos == tl.max(cos, axis=0), js, M_PAD), axis=0)   # first maximum
        present = tl.load(slot_ptr + bi)
        tl.store(slot_ptr + bi, tl.where(present != 0, best, -1).to(tl.int64))
    else:
        logit = tl.where(jmask, cos / TAU, -float("inf"))
        e = tl.exp(logit - tl.max(logit, axis=0))
        e = tl.where(jmask, e, 0.0)
        a = e / tl.sum(e, axis=0)
        tl.store(attn_ptr + bi * m + js, a, mask=jmask)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            cmask = cs < C
            mv = tl.load(mem_rows + cs[None, :], mask=jmask[:, None] & cmask[None, :], other=0.0).to(ACC)
            tl.store(out_ptr + bi * C + cs, tl.sum(a[:, None] * mv, axis=0).to(out_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _read_bwd_kernel(g_ptr, q_ptr, mem_ptr, attn_ptr, gq_ptr, n, m, C,
                     TAU: tl.constexpr, EPS: tl.constexpr, ACC: tl.constexpr,
                     M_PAD: tl.constexpr, BLOCK_C: tl.constexpr):
    """gq = (gqn - [|q|>eps] (qn . gqn) qn) / max(|q|, eps), gqn = sum_j glogit_j mem_j / max(|mem_j|, eps)."""
    bi = tl.program_id(0).to(tl.int64)
    i = bi % n
    js = tl.arange(0, M_PAD)
    jmask = js < m
    mem_rows = mem_ptr + (i * m + js[:, None]) * C
    dots = tl.full([M_PAD], 0.0, ACC)   # <mem_j, q>
    gdot = tl.full([M_PAD], 0.0, ACC)   # <mem_j, grad>: d loss / d attn_j
    mn2 = tl.full([M_PAD], 0.0, ACC)
    qn2 = tl.full([BLOCK_C], 0.0, ACC)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < C
        qv = tl.load(q_ptr + bi * C + cs, mask=cmask, other=0.0).to(ACC)
        gv = tl.load(g_ptr + bi * C + cs, mask=cmask, other=0.0).to(ACC)
        mv = tl.load(mem_rows + cs[None, :], mask=jmask[:, None] & cmask[None, :], other=0.0).to(ACC)
        dots += tl.sum(mv * qv[None, :], axis=1)
        gdot += tl.sum(mv * gv[None, :], axis=1)
        mn2 += tl.sum(mv * mv, axis=1)
        qn2 += qv * qv
    a = tl.load(attn_ptr + bi * m + js, mask=jmask, other=0.0).to(ACC)
    glogit = a * (gdot - tl.sum(a * gdot, axis=0)) / TAU
    w = glogit / tl.maximum(tl.sqrt(mn2), EPS)   # gqn = sum_j w_j mem_j
    norm = tl.sqrt(tl.sum(qn2, axis=0))
    big = norm > EPS
    safe = tl.where(big, norm, EPS)
    # qn . gqn = sum_j w_j <mem_j, q> / safe; the radial part of gqn is that times q / safe
    radial = tl.where(big, tl.sum(w * dots, axis=0) / (safe * safe), 0.0)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cmask = cs < C
        qv = tl.load(q_ptr + bi * C + cs, mask=cmask, other=0.0).to(ACC)
        mv = tl.load(mem_rows + cs[None, :], mask=jmask[:, None] & cmask[None, :], other=0.0).to(ACC)
        gqn = tl.sum(w[:, None] * mv, axis=0)
        tl.store(gq_ptr + bi * C + cs, ((gqn - radial * qv) / safe).to(gq_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _update_kernel(mem_ptr, v_ptr, slot_ptr, B, n, m, C,
                   ALPHA: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """mem[i,j] <- ALPHA mem[i,j] + (1-ALPHA) mean_{b: slot[b,i]=j} v[b,i] for the slots someone chose."""
    i = tl.program_id(0).to(tl.int64)
    js = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    jmask = js < m
    cmask = cs < C
    total = tl.full([BLOCK_M, BLOCK_C], 0.0, ACC)
    count = tl.full([BLOCK_M], 0.0, ACC)
    for b in range(B):
        k = tl.load(slot_ptr + b * n + i)          # -1 for an absent region: matches no slot
        hit = (js == k).to(ACC)
        vv = tl.load(v_ptr + (b * n + i) * C + cs, mask=cmask, other=0.0).to(ACC)
        total += hit[:, None] * vv[None, :]
        count += hit
    ptrs = mem_ptr + (i * m + js[:, None]) * C + cs[None, :]
    msk = jmask[:, None] & cmask[None, :]
    old = tl.load(ptrs, mask=msk, other=0.0).to(ACC)
    mean = total / tl.maximum(count, 1.0)[:, None]
    new = tl.where((count > 0)[:, None], ALPHA * old + (1 - ALPHA) * mean, old)
    tl.store(ptrs, new.to(mem_ptr.dtype.element_ty), mask=msk & (count > 0)[:, None])


def _read_blocks(m, c):
    m_pad = pow2(m, 2)
    return m_pad, pow2(c, 2, max(2, 4096 // m_pad))


@register_kernel("memory_read.forward", "triton")
@no_autocast
def read(q, mem, tau):
    bsz, n, c = q.shape
    m = mem.shape[1]
    q, mem = q.contiguous(), mem.contiguous()
    out = out_buffer(q.shape, q.dtype, q.device)
    attn = torch.empty((bsz, n, m), dtype=acc_dtype(q.dtype), device=q.device)
    if bsz * n:
        m_pad, block_c = _read_blocks(m, c)
        _read_fwd_kernel[(bsz * n,)](q, mem, out, attn, attn, n, m, c, ARGMAX=False, TAU=float(tau), EPS=COS_EPS,
                                     ACC=acc_tl(q.dtype), M_PAD=m_pad, BLOCK_C=block_c,
                                     num_warps=num_warps(m_pad * block_c))
    return finish(out, q.dtype), attn


@register_kernel("memory_read.backward", "triton")
@no_autocast
def read_backward(grad, q, mem, attn, tau):
    bsz, n, c = q.shape
    m = mem.shape[1]
    gq = out_buffer(q.shape, q.dtype, q.device)
    if bsz * n:
        m_pad, block_c = _read_blocks(m, c)
        _read_bwd_kernel[(bsz * n,)](grad.contiguous(), q.contiguous(), mem.contiguous(), attn.contiguous(), gq,
                                     n, m, c, TAU=float(tau), EPS=COS_EPS, ACC=acc_tl(attn.dtype), M_PAD=m_pad,
                                     BLOCK_C=block_c, num_warps=num_warps(m_pad * block_c))
    return finish(gq, q.dtype)


@register_kernel("memory_update.forward", "triton")
@no_autocast
def update_(mem, q, v, present, alpha):
    """In place on mem (contiguous); returns the chosen slots (B,n) int64, -1 where absent."""
    bsz, n, c = q.shape
    m = mem.shape[1]
    q, v = q.contiguous(), v.contiguous()
    slots = present.to(torch.int64).contiguous()   # the argmax pass reads presence here, then overwrites it
    if bsz * n == 0:
        return slots
    m_pad, block_c = _read_blocks(m, c)
    _read_fwd_kernel[(bsz * n,)](q, mem, q, q, slots, n, m, c, ARGMAX=True, TAU=1.0, EPS=COS_EPS,
                                 ACC=acc_tl(mem.dtype), M_PAD=m_pad, BLOCK_C=block_c,
                                 num_warps=num_warps(m_pad * block_c))
    # the interpreter truncates bf16 stores: update an fp32 copy there and round with copy_
    target = mem.float() if mem.dtype == torch.bfloat16 and triton_interpreter() else mem
    block_m = pow2(m, 2, 64)
    block_c = pow2(c, 2, 64)
    _update_kernel[(n, triton.cdiv(m, block_m), triton.cdiv(c, block_c))](
        target, v, slots, bsz, n, m, c, ALPHA=float(alpha), ACC=acc_tl(mem.dtype), BLOCK_M=block_m,
        BLOCK_C=block_c, num_warps=num_warps(block_m * block_c))
    if target is not mem:
        mem.copy_(target)
    return slots
