"""spade_modulate (SPEC §6): custom op `mdrnet_fast::spade_modulate` = instance_norm(x)*(1+gamma)+beta."""
from typing import List, Tuple

import torch
from torch import Tensor

from .. import reference
from .._dispatch import get_kernel, resolve
from . import _checks
from ._register import call, empty_like_format, register_autograd, register_plain


@torch.library.custom_op("mdrnet_fast::spade_modulate", mutates_args=())
def spade_modulate_op(x: Tensor, gamma: Tensor, beta: Tensor, eps: float, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(out, mean (B,C), rstd (B,C)); the statistics are kept for the backward."""
    return get_kernel("spade_modulate.forward", backend)(x, gamma, beta, eps)


@spade_modulate_op.register_fake
def _(x, gamma, beta, eps, backend):
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    stats = x.new_empty(x.shape[:2], dtype=acc)
    return empty_like_format(x, x.shape), stats, torch.empty_like(stats)


@torch.library.custom_op("mdrnet_fast::spade_modulate_backward", mutates_args=())
def spade_modulate_backward_op(grad_out: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor,
                               needs: List[bool], backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    grads = get_kernel("spade_modulate.backward", backend)(grad_out, x, gamma, mean, rstd, *needs)
    return tuple(gr if need else x.new_empty(0) for gr, need in zip(grads, needs))


@spade_modulate_backward_op.register_fake
def _(grad_out, x, gamma, mean, rstd, needs, backend):
    like = (x, gamma, grad_out)
    return tuple(empty_like_format(t, t.shape) if need else x.new_empty(0) for t, need in zip(like, needs))


register_plain(spade_modulate_backward_op)


def _setup_context(ctx, inputs, output):
    x, gamma, beta, eps, backend = inputs
    ctx.save_for_backward(x, gamma, output[1], output[2])
    ctx.backend = backend
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad_out, _grad_mean, _grad_rstd):
    x, gamma, mean, rstd = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:3])
    grads = call(spade_modulate_backward_op, grad_out, x, gamma, mean, rstd, needs, ctx.backend)
    return (*(gr if need else None for gr, need in zip(grads, needs)), None, None)


register_autograd(spade_modulate_op, _backward, _setup_context)


def spade_modulate(x, gamma, beta, eps=1e-5):
    """instance_norm(x) * (1 + gamma) + beta (SPEC §6); x, gamma, beta (B,C,H,W); statistics in fp32."""
    _checks.tensor("x", x, 4)
    _checks.tensor("gamma", gamma, 4)
    _checks.tensor("beta", beta, 4)
    _checks.same_device(x=x, gamma=gamma, beta=beta)
    for name, t in (("gamma", gamma), ("beta", beta)):
        if t.shape != x.shape:
            raise ValueError(f"{name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    gamma, beta = gamma.to(x.dtype), beta.to(x.dtype)
    backend = resolve("spade_modulate", x.device)
    if backend == "reference":
        return reference.spade_modulate(x, gamma, beta, eps)
    out, _, _ = call(spade_modulate_op, x, gamma, beta, float(eps), backend)
    return out
