"""Shared pieces of the custom-op registration."""
import torch

from ..composite._common import out_format


def conv_out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def empty_like_format(x, shape, dtype=None, like=None):
    """A new tensor of `shape`, channels_last when `like` (default x) is channels_last."""
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device,
                       memory_format=out_format(like if like is not None else x))
