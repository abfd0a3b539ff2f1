"""SPEC §5: masked patch attention, the core of Masked Correlation Mining (ShowFace §3.3)."""
import math

import torch
import torch.nn.functional as F

from ._common import acc_dtype


def pad_to_multiple(x, p):
    """Zero-pad bottom/right so H and W are multiples of p."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % p, 0, (-h) % p))


def to_patches(x, p):
    """(B,C,H,W) with H,W multiples of p -> (B, N, C*p*p), patches row-major, vectors (c, ky, kx) as F.unfold."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def from_patches(x, c, h, w, p):
    """Inverse of to_patches (non-overlapping patches: fold is a reshape)."""
    b = x.shape[0]
    x = x.reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def default_scale(channels, p):
    return 1.0 / math.sqrt(channels * p * p)


def masked_patch_attention(theta, phi, g, mask, patch_size, scale=None):
    """fold(softmax(scale * Theta Phi^T) G) * (1 - mask), cropped back to H x W.

    theta, phi (B,Ck,H,W); g (B,Cv,H,W); mask (B,1,H,W), 1 = valid. Builds the full (N,N) matrix:
    this is the definition, not a fast path.
    """
    p = int(patch_size)
    h, w = theta.shape[-2:]
    if scale is None:
        scale = default_scale(theta.shape[1], p)
    acc = acc_dtype(theta.dtype)
    tq = to_patches(pad_to_multiple(theta.to(acc), p), p)
    tk = to_patches(pad_to_multiple(phi.to(acc), p), p)
    gp = pad_to_multiple(g.to(acc), p)
    tv = to_patches(gp, p)
    attn = torch.softmax(scale * tq @ tk.transpose(1, 2), dim=-1)
    out = from_patches(attn @ tv, g.shape[1], gp.shape[-2], gp.shape[-1], p)[..., :h, :w]
    return (out * (1 - mask.to(acc))).to(g.dtype)
