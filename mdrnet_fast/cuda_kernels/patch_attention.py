"""Masked patch attention (SPEC §5) for the `cuda` backend, through PyTorch's fused attention (SDPA).

    out = fold(softmax(scale * Theta Phi^T) G) * (1 - mask)     p x p non-overlapping patches, d = C' p^2

Pure PyTorch: no compiled extension (mdrnet_fast._C_cuda is not needed), and the same code runs CPU tensors,
so the tests run it here.

Which SDPA kernel takes which problem (PyTorch's sdp_utils.cpp checks and mem_eff_attention kernel list, CUDA,
sm_90, dense inputs, no mask, no dropout):

  kernel              dtypes            head dim d (q, k, v)                          backward        scores
  flash (FA2)         fp16, bf16        <= 256                                        same limit (*)  never stored
  cuDNN               fp16, bf16        multiple of 8; <= 128, or <= 256 on sm_90 /   d <= 128, or    never stored
                                        sm_10x with cuDNN > 9.22 and a new frontend   d = 256 only
  memory-efficient    fp32, fp16, bf16  any, a multiple of 4 (fp32) / 8 (16-bit),     any d (k65536   never stored
  (CUTLASS/xFormers)  (sm_80+)          the GEMM alignment; d > 128 runs the kernels  kernels too)
                                        that keep the output accumulator in memory
  math                all, incl. fp64   any                                           autograd        L x N, saved
  (*) on sm_86/89/120 flash does not train with d in (192, 224].

The paper's MCM (C' = 128, p = 2) has d = 512: flash and cuDNN refuse it in every dtype, so on a GPU the
memory-efficient kernel is the only fused one, for fp32, fp16 and bf16, forward and backward. fp64 on CUDA has
only the math kernel, which stores the L x N scores: there (and wherever no fused kernel is allowed, e.g. with
torch.backends.cuda.enable_mem_efficient_sdp(False)) this module runs queries in chunks of about
CHUNK_ELEMENTS scores, so memory stays O(chunk * N). d is zero-padded to a multiple of 8 (exact: zero columns
add nothing to Theta Phi^T, and the output's padded columns are dropped) so the alignment check always passes,
and q, k, v get one width (the larger), since the flash kernels need equal head dims.

Forward: the public F.scaled_dot_product_attention returns no log-sum-exp, but the registry contract's
forward returns lse (B, N). The aten op under SDPA that this problem selects returns it at no extra cost, so
the forward calls that op itself: `_scaled_dot_product_efficient_attention(..., compute_log_sumexp=True)` on
CUDA (when torch.backends.cuda.can_use_efficient_attention allows it), and on CPU SDPA's own CPU kernel
`_scaled_dot_product_flash_attention_for_cpu` (blockwise; fp32, fp64, bf16, fp16). 16-bit inputs stay 16-bit
(the kernels accumulate in fp32). lse is +inf for query patches skipped (as the CPU and Triton kernels); this
backend's backward does not read it.

Backward "through SDPA's own": the fused kernels' backward recomputes the scores anyway, so the backward
recomputes the SDPA forward on detached leaves under torch.enable_grad() (restricted to the fused kernels with
torch.nn.attention.sdpa_kernel, so it can never fall back to the math kernel silently) and takes
torch.autograd.grad with dO' = dO * (1 - mask). `out` and `lse` are not read.

Skipping queries: out is multiplied by (1 - mask), so a query patch without a hole pixel (inside H x W; the
padding does not count) has zero output and gives no gradient. The kernels gather only the query patches with
a hole (stable sort of the hole flags, hole patches first) and all key / value patches, run SDPA, and scatter
back. The gathered length L is the largest hole count in the batch, rounded up to QUERY_BUCKET (fewer
distinct shapes); the extra rows of images with fewer holes are hole-free patches, whose results the mask
zeroes exactly. Knowing L needs the count on the host: free for CPU tensors, but one device-to-host sync per
forward and per backward on CUDA, and the project keeps its ops asynchronous on a GPU (tests/test_gpu_async.py).
So by default (COMPACT_QUERIES = None) CUDA tensors run every query patch (the same values; the hole-free
ones cost compute only); COMPACT_QUERIES = True compacts on CUDA too, except while a CUDA graph is being
captured (torch.cuda.is_current_stream_capturing()) or torch.compile traces; False never compacts.
"""
import math

import torch
import torch.nn.functional as F

from .._dispatch import register_kernel
from ..composite._common import acc_dtype, no_autocast
from ..reference.patch_attention import from_patches, pad_to_multiple, to_patches

# Gather only the query patches with a hole (see the docstring). None: where counting them is free (CPU
# tensors), not on CUDA, where the count is a host sync and the ops stay asynchronous (tests/test_gpu_async.py);
# True: on CUDA too (one sync per forward and per backward); False: never.
COMPACT_QUERIES = None
QUERY_BUCKET = 64           # the gathered query count is rounded up to a multiple of this
CHUNK_ELEMENTS = 1 << 22    # math fallback: query rows per chunk = CHUNK_ELEMENTS // N (16 MiB of fp32 scores)
_ALIGN = 8                  # head dims are zero-padded to this (the memory-efficient kernel's GEMM alignment)

_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


# ------------------------------------------------------------------ patches

def _round_up(x, m):
    return -(-x // m) * m


def _pack(x, p, width):
    """(B,C,H,W) -> (B, 1, N, width): patch rows (reference.to_patches), zero columns past C p^2."""
    rows = to_patches(pad_to_multiple(x, p), p)
    if rows.shape[-1] != width:
        rows = F.pad(rows, (0, width - rows.shape[-1]))
    return rows.unsqueeze(1)


def _fold(rows, c, h, w, p):
    """(B, N, >= c p^2) patch rows -> (B, c, h, w) (the padding cropped)."""
    rows = rows[..., :c * p * p]
    return from_patches(rows, c, _round_up(h, p), _round_up(w, p), p)[..., :h, :w]


def _compact(t):
    """Whether to count the hole patches on the host (see COMPACT_QUERIES)."""
    if COMPACT_QUERIES is False or torch.compiler.is_compiling():
        return False
    if t.device.type == "cpu":
        return True
    return COMPACT_QUERIES is True and not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _query_rows(mask, p):
    """(B, L) indices of the query patches to run (hole patches first), or None for all of them."""
    if not _compact(mask):
        return None
    hole = to_patches(pad_to_multiple(1 - mask, p), p).ne(0).any(-1)   # zero padding: not a hole
    n = hole.shape[1]
    count = int(hole.sum(1).max())   # the host sync
    length = min(n, _round_up(count, max(1, int(QUERY_BUCKET))))
    if length == n:
        return None
    order = torch.argsort(hole.to(torch.int8), dim=1, descending=True, stable=True)
    return order[:, :length]


def _gather(rows, idx):
    """rows (B, 1, N, e) -> (B, 1, L, e) at idx (B, L)."""
    if idx is None:
        return rows
    return rows.gather(2, idx[:, None, :, None].expand(-1, 1, -1, rows.shape[-1]))


def _scatter(rows, idx, n):
    """rows (B, 1, L, e) -> (B, N, e): zeros where idx has no row."""
    rows = rows.squeeze(1)
    if idx is None:
        return rows
    full = rows.new_zeros((rows.shape[0], n, rows.shape[-1]))
    return full.scatter_(1, idx[..., None].expand(-1, -1, rows.shape[-1]), rows)


# ------------------------------------------------------------------ SDPA calls

def _sdpa_params(q, k, v):
    try:
        return torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False, False)
    except TypeError:  # torch < 2.5: no enable_gqa argument
        return torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False)


def _efficient_ok(q, k, v):
    return torch.backends.cuda.can_use_efficient_attention(_sdpa_params(q, k, v), False)


def _fused_ok(q, k, v):
    """Whether a fused SDPA kernel (scores never stored) takes q, k, v, with their requires_grad."""
    if q.device.type == "cpu":
        return q.dtype in _CPU_DTYPES
    if not q.is_cuda:
        return False
    params = _sdpa_params(q, k, v)
    checks = [torch.backends.cuda.can_use_flash_attention, torch.backends.cuda.can_use_efficient_attention,
              getattr(torch.backends.cuda, "can_use_cudnn_attention", None)]
    return any(check is not None and check(params, False) for check in checks)


def _fused_backends():
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]


def _chunk(n):
    return max(1, int(CHUNK_ELEMENTS) // max(n, 1))


def _attend(q, k, v, scale):
    """(o (B,1,L,e) in q's dtype, lse (B,L) in the accumulation dtype) of softmax(scale q k^T) v."""
    length = q.shape[2]
    if q.device.type == "cpu" and _fused_ok(q, k, v):
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=None,
                                                                            scale=scale)
        return o, lse[:, 0].to(acc_dtype(q.dtype))
    if q.is_cuda and _efficient_ok(q, k, v):
        o, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False,
                                                                        scale=scale)[:2]
        return o, lse[:, 0, :length].float()   # older versions pad lse's length to a multiple of 32
    return _attend_chunked(q, k, v, scale)


def _attend_chunked(q, k, v, scale):
    """The math fallback: one chunk of query rows at a time, so the scores are O(chunk * N)."""
    acc = acc_dtype(q.dtype)
    kt, va = k.to(acc).transpose(-1, -2), v.to(acc)
    o = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    lse = torch.empty(q.shape[0], q.shape[2], dtype=acc, device=q.device)
    step = _chunk(k.shape[2])
    for s in range(0, q.shape[2], step):
        scores = (q[:, :, s:s + step].to(acc) @ kt) * scale
        m = torch.logsumexp(scores, dim=-1)
        o[:, :, s:s + step] = (scores.sub_(m.unsqueeze(-1)).exp_() @ va).to(o.dtype)   # in place: one L_c x N buffer
        lse[:, s:s + step] = m[:, 0]
    return o, lse


def _attend_backward(q, k, v, d_o, scale):
    """(dq, dk, dv) of softmax(scale q k^T) v for the output gradient d_o, by SDPA's own backward."""
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    if _fused_ok(*leaves):
        from torch.nn.attention import sdpa_kernel

        backends = _fused_backends() if q.is_cuda else [_fused_backends()[0]]
        with torch.enable_grad(), sdpa_kernel(backends):
            o = F.scaled_dot_product_attention(*leaves, scale=scale)
        return torch.autograd.grad(o, leaves, d_o)
    # math fallback, in the accumulation dtype: each chunk's graph (its L_c x N probabilities) is freed
    # before the next one is built
    acc = acc_dtype(q.dtype)
    k_leaf, v_leaf = (t.detach().to(acc).requires_grad_(True) for t in (k, v))
    dq = torch.empty_like(q)
    dk, dv = torch.zeros_like(k_leaf), torch.zeros_like(v_leaf)
    step = _chunk(k.shape[2])
    for s in range(0, q.shape[2], step):
        q_leaf = q[:, :, s:s + step].detach().to(acc).requires_grad_(True)
        with torch.enable_grad():
            o = torch.softmax((q_leaf @ k_leaf.transpose(-1, -2)) * scale, dim=-1) @ v_leaf
        gq, gk, gv = torch.autograd.grad(o, (q_leaf, k_leaf, v_leaf), d_o[:, :, s:s + step].to(acc))
        dq[:, :, s:s + step] = gq.to(dq.dtype)
        dk += gk
        dv += gv
    return dq, dk.to(k.dtype), dv.to(v.dtype)


# ------------------------------------------------------------------ the registered kernels

def _check(theta, phi, g, mask, patch_size):
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
    if theta.dim() != 4 or phi.shape != theta.shape:
        raise ValueError(f"theta and phi must be (B,C,H,W) of one shape, got {tuple(theta.shape)} and "
                         f"{tuple(phi.shape)}")
    want = (theta.shape[0], 1) + tuple(theta.shape[-2:])
    if g.dim() != 4 or g.shape[0] != theta.shape[0] or g.shape[-2:] != theta.shape[-2:]:
        raise ValueError(f"g must be (B,C,H,W) with theta's B = {want[0]} and H x W = {want[2]} x {want[3]}, "
                         f"got {tuple(g.shape)}")
    if tuple(mask.shape) != want:
        raise ValueError(f"mask must have shape {want}, got {tuple(mask.shape)}")


def _operands(theta, phi, g, p, idx):
    # one padded width for q, k and v: the flash kernels (CPU and CUDA) need equal head dims
    e = _round_up(max(theta.shape[1], g.shape[1]) * p * p, _ALIGN)
    return _gather(_pack(theta, p, e), idx), _pack(phi, p, e), _pack(g, p, e)


@register_kernel("patch_attention.forward", "cuda")
@no_autocast
def forward(theta, phi, g, mask, patch_size, scale):
    """(out (B,Cv,H,W) in g's dtype, lse (B,N) in the accumulation dtype, +inf for skipped query patches)."""
    _check(theta, phi, g, mask, patch_size)
    p, acc = int(patch_size), acc_dtype(theta.dtype)
    (h, w), cv = theta.shape[-2:], g.shape[1]
    n = _round_up(h, p) // p * (_round_up(w, p) // p)
    lse = torch.full((theta.shape[0], n), math.inf, dtype=acc, device=theta.device)
    idx = _query_rows(mask, p)
    if idx is not None and idx.shape[1] == 0:   # no hole anywhere: nothing to attend
        return torch.zeros(g.shape, dtype=g.dtype, device=g.device), lse
    q, k, v = _operands(theta, phi, g, p, idx)
    o, lse_rows = _attend(q, k, v, float(scale))
    if idx is None:
        lse = lse_rows
    else:
        lse.scatter_(1, idx, lse_rows)
    out = _fold(_scatter(o, idx, n), cv, h, w, p)
    # the mask factor in the accumulation dtype, one rounding to g's dtype
    return (out.to(acc) * (1 - mask.to(acc))).to(g.dtype).contiguous(), lse


@register_kernel("patch_attention.backward", "cuda")
@no_autocast
def backward(grad_out, theta, phi, g, mask, out, lse, patch_size, scale):
    """(d_theta, d_phi, d_g); recomputes the forward (`out` and `lse` are not read)."""
    _check(theta, phi, g, mask, patch_size)
    p, acc = int(patch_size), acc_dtype(theta.dtype)
    (h, w), ck, cv = theta.shape[-2:], theta.shape[1], g.shape[1]
    n = _round_up(h, p) // p * (_round_up(w, p) // p)
    idx = _query_rows(mask, p)
    if idx is not None and idx.shape[1] == 0:   # no hole: the output is zero whatever the inputs
        return (torch.zeros(theta.shape, dtype=theta.dtype, device=theta.device),
                torch.zeros(phi.shape, dtype=phi.dtype, device=phi.device),
                torch.zeros(g.shape, dtype=g.dtype, device=g.device))
    q, k, v = _operands(theta, phi, g, p, idx)
    # dO' = dO * (1 - mask): the gradient reaching the unmasked attention output, in the SDPA dtype
    d_o = (grad_out.to(acc) * (1 - mask.to(acc))).to(v.dtype)
    d_o = _gather(_pack(d_o, p, v.shape[-1]), idx)
    dq, dk, dv = _attend_backward(q, k, v, d_o, float(scale))
    return (_fold(_scatter(dq, idx, n), ck, h, w, p).to(theta.dtype).contiguous(),
            _fold(dk.squeeze(1), ck, h, w, p).to(phi.dtype).contiguous(),
            _fold(dv.squeeze(1), cv, h, w, p).to(g.dtype).contiguous())
