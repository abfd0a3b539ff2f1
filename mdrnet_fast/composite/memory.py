"""Cosine memory read (with explicit gradient) and the batch-mean EMA update (SPEC §4)."""
import torch

from .._dispatch import register_kernel
from ..reference import memory as ref
from ._common import acc_dtype, no_autocast


@register_kernel("memory_read.forward", "composite")
@no_autocast
def read(q, mem, tau):
    """(q_hat, attn): attn (B,n,m) softmax weights, kept for the backward."""
    acc = acc_dtype(q.dtype)
    m32 = mem.to(acc)
    attn = torch.softmax(ref.cosine(q.to(acc), m32) / tau, dim=-1)
    return torch.einsum("bij,ijc->bic", attn, m32).to(q.dtype).contiguous(), attn.contiguous()


@register_kernel("memory_read.backward", "composite")
@no_autocast
def read_backward(grad, q, mem, attn, tau):
    acc = attn.dtype
    q32, m32 = q.to(acc), mem.to(acc)
    grad_attn = torch.einsum("bic,ijc->bij", grad.to(acc), m32)
    grad_logit = attn * (grad_attn - (attn * grad_attn).sum(-1, keepdim=True)) / tau
    mn = m32 / m32.norm(dim=-1, keepdim=True).clamp_min(ref.COS_EPS)
    grad_qn = torch.einsum("bij,ijc->bic", grad_logit, mn)
    norm = q32.norm(dim=-1, keepdim=True)
    # qn = q / max(|q|, eps): the norm term only carries gradient where |q| > eps
    big = norm > ref.COS_EPS
    safe = torch.where(big, norm, torch.full_like(norm, ref.COS_EPS))
    qn = q32 / safe
    radial = torch.where(big, (qn * grad_qn).sum(-1, keepdim=True) * qn, torch.zeros_like(qn))
    return ((grad_qn - radial) / safe).to(q.dtype).contiguous()


@register_kernel("memory_update.forward", "composite")
@no_autocast
def update_(mem, q, v, present, alpha):
    return ref.memory_update_(mem, q, v, present, alpha)
