"""SPEC §6: SPADE modulation (Park et al. 2019): instance_norm(x) * (1 + gamma) + beta."""
import torch

from ._common import acc_dtype


def spade_modulate(x, gamma, beta, eps=1e-5):
    acc = acc_dtype(x.dtype)
    x32 = x.to(acc)
    var, mean = torch.var_mean(x32, dim=(2, 3), unbiased=False, keepdim=True)
    xhat = (x32 - mean) * torch.rsqrt(var + eps)
    return (xhat * (1 + gamma.to(acc)) + beta.to(acc)).to(x.dtype)
