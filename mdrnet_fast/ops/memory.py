"""memory_read / memory_update_ (SPEC §4): custom ops `mdrnet_fast::memory_read` (differentiable in q)
and `mdrnet_fast::memory_update_` (in place on mem, no gradient)."""
from typing import Tuple

import torch
from torch import Tensor

from .. import reference
from .._dispatch import get_kernel, resolve
from . import _checks
from ._register import call, register_autograd, register_plain


@torch.library.custom_op("mdrnet_fast::memory_read", mutates_args=())
def memory_read_op(q: Tensor, mem: Tensor, tau: float, backend: str) -> Tuple[Tensor, Tensor]:
    """(q_hat (B,n,C), attn (B,n,m) fp32 softmax weights kept for the backward)."""
    return get_kernel("memory_read.forward", backend)(q, mem, tau)


@memory_read_op.register_fake
def _(q, mem, tau, backend):
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return q.new_empty(q.shape), q.new_empty((q.shape[0], mem.shape[0], mem.shape[1]), dtype=acc)


@torch.library.custom_op("mdrnet_fast::memory_read_backward", mutates_args=())
def memory_read_backward_op(grad: Tensor, q: Tensor, mem: Tensor, attn: Tensor, tau: float, backend: str) -> Tensor:
    return get_kernel("memory_read.backward", backend)(grad, q, mem, attn, tau)


@memory_read_backward_op.register_fake
def _(grad, q, mem, attn, tau, backend):
    return q.new_empty(q.shape)


register_plain(memory_read_backward_op)


def _setup_context(ctx, inputs, output):
    q, mem, tau, backend = inputs
    ctx.save_for_backward(q, mem, output[1])
    ctx.args = (tau, backend)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad, _grad_attn):
    q, mem, attn = ctx.saved_tensors
    tau, backend = ctx.args
    return call(memory_read_backward_op, grad.contiguous(), q, mem, attn, tau, backend), None, None, None


register_autograd(memory_read_op, _backward, _setup_context)


@torch.library.custom_op("mdrnet_fast::memory_update_", mutates_args=("mem",))
def memory_update_op(mem: Tensor, q: Tensor, v: Tensor, present: Tensor, alpha: float, backend: str) -> Tensor:
    return get_kernel("memory_update.forward", backend)(mem, q, v, present, alpha)


@memory_update_op.register_fake
def _(mem, q, v, present, alpha, backend):
    return q.new_empty(q.shape[:2], dtype=torch.int64)


def _check_memory(q, mem):
    _checks.tensor("q", q, 3)
    _checks.tensor("mem", mem, 3)
    _checks.same_device(q=q, mem=mem)
    if q.shape[1] != mem.shape[0] or q.shape[2] != mem.shape[2]:
        raise ValueError(f"q must have shape (B, n={mem.shape[0]}, C={mem.shape[2]}) to match mem "
                         f"(n, m, C)={tuple(mem.shape)}, got {tuple(q.shape)}")
    if mem.shape[1] < 1:
        raise ValueError(f"mem must have at least one slot, got shape {tuple(mem.shape)}")


def memory_read(q, mem, tau=1.0):
    """q_hat[b,i] = sum_j softmax_j(cos(q[b,i], mem[i,j]) / tau) mem[i,j] (SPEC §4); (B,n,C).

    q (B,n,C) float; mem (n,m,C) float, a buffer (no gradient flows into it).
    """
    _check_memory(q, mem)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    backend = resolve("memory_read", q.device)
    if backend == "reference":
        return reference.memory_read(q, mem, tau)
    q_hat, _ = call(memory_read_op, q.contiguous(), mem.detach().contiguous(), float(tau), backend)
    return q_hat


def memory_update_(mem, q, v, present, alpha):
    """Batch-mean EMA update of the memory, in place (SPEC §4). Returns slots (B,n) int64: the slot
    k[b,i] = argmax_j cos (lowest j on ties) each sample chose, -1 where present[b,i] is False.

    mem (n,m,C); q, v (B,n,C); present (B,n) bool; alpha in [0,1].
    """
    _check_memory(q, mem)
    _checks.tensor("v", v, 3)
    if v.shape != q.shape:
        raise ValueError(f"v must have q's shape {tuple(q.shape)}, got {tuple(v.shape)}")
    if not isinstance(present, Tensor) or tuple(present.shape) != tuple(q.shape[:2]):
        raise ValueError(f"present must be a (B,n)={tuple(q.shape[:2])} bool tensor, got {getattr(present, 'shape', present)!r}")
    _checks.same_device(mem=mem, q=q, v=v, present=present)
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if not mem.is_contiguous():
        raise ValueError("mem must be contiguous (it is updated in place)")
    backend = resolve("memory_update", mem.device)
    if backend == "reference":
        return reference.memory_update_(mem, q, v, present.to(torch.bool), float(alpha))
    with torch.no_grad():
        return memory_update_op(mem, q.detach().contiguous(), v.detach().contiguous(),
                                present.to(torch.bool).contiguous(), float(alpha), backend)
