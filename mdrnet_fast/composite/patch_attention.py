"""Masked patch attention with explicit (recomputing) gradient. Builds the (N,N) matrix one query
chunk at a time, so memory is O(chunk*N), not O(N^2); the fused kernels never build it at all."""
import torch

from .._dispatch import register_kernel
from ..reference.patch_attention import from_patches, pad_to_multiple, to_patches
from ._common import acc_dtype, no_autocast

QUERY_CHUNK = 1024


def _patches(theta, phi, g, p, acc):
    return (to_patches(pad_to_multiple(theta.to(acc), p), p), to_patches(pad_to_multiple(phi.to(acc), p), p),
            to_patches(pad_to_multiple(g.to(acc), p), p))


def _fold(x, c, h, w, p):
    hp, wp = h + (-h) % p, w + (-w) % p
    return from_patches(x, c, hp, wp, p)[..., :h, :w]


@register_kernel("patch_attention.forward", "composite")
@no_autocast
def forward(theta, phi, g, mask, patch_size, scale):
    """(out (B,Cv,H,W), lse (B,N)): lse = logsumexp of each query's scores, kept for the backward."""
    acc, p = acc_dtype(theta.dtype), patch_size
    h, w = theta.shape[-2:]
    tq, tk, tv = _patches(theta, phi, g, p, acc)
    outs, lses = [], []
    for s in range(0, tq.shape[1], QUERY_CHUNK):
        scores = scale * tq[:, s:s + QUERY_CHUNK] @ tk.transpose(1, 2)
        lse = torch.logsumexp(scores, dim=-1)
        outs.append(torch.exp(scores - lse.unsqueeze(-1)) @ tv)
        lses.append(lse)
    out = _fold(torch.cat(outs, 1), g.shape[1], h, w, p) * (1 - mask.to(acc))
    return out.to(g.dtype).contiguous(), torch.cat(lses, 1)


@register_kernel("patch_attention.backward", "composite")
@no_autocast
def backward(grad_out, theta, phi, g, mask, out, lse, patch_size, scale):
    """`out` (the forward's) is unused here: D = rowsum(P dP) comes with the probabilities anyway."""
    acc, p = acc_dtype(theta.dtype), patch_size
    tq, tk, tv = _patches(theta, phi, g, p, acc)
    d_out = to_patches(pad_to_multiple(grad_out.to(acc) * (1 - mask.to(acc)), p), p)
    d_q = torch.empty_like(tq)
    d_k, d_v = torch.zeros_like(tk), torch.zeros_like(tv)
    for s in range(0, tq.shape[1], QUERY_CHUNK):
        e = s + QUERY_CHUNK
        prob = torch.exp(scale * tq[:, s:e] @ tk.transpose(1, 2) - lse[:, s:e].unsqueeze(-1))
        d_v += prob.transpose(1, 2) @ d_out[:, s:e]
        d_prob = d_out[:, s:e] @ tv.transpose(1, 2)
        d_score = prob * (d_prob - (prob * d_prob).sum(-1, keepdim=True)) * scale
        d_q[:, s:e] = d_score @ tk
        d_k += d_score.transpose(1, 2) @ tq[:, s:e]
    h, w = theta.shape[-2:]
    return (_fold(d_q, theta.shape[1], h, w, p).to(theta.dtype).contiguous(),
            _fold(d_k, phi.shape[1], h, w, p).to(phi.dtype).contiguous(),
            _fold(d_v, g.shape[1], h, w, p).to(g.dtype).contiguous())
