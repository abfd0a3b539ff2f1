"""Cosine memory on CPU (SPEC §4): the read, its backward and the in-place batch-mean update are each one
fused C++ pass per query row / memory block (csrc/cpu/memory.cpp), with no (B,n,m) or (n,m,C) temporaries."""
from .. import _C
from .._dispatch import register_kernel
from ..composite._common import no_autocast


@register_kernel("memory_read.forward", "cpu")
@no_autocast
def read(q, mem, tau):
    q_hat, attn = _C.memory_read_forward(q, mem, float(tau))
    return q_hat, attn


@register_kernel("memory_read.backward", "cpu")
@no_autocast
def read_backward(grad, q, mem, attn, tau):
    return _C.memory_read_backward(grad, q, mem, attn, float(tau))


@register_kernel("memory_update.forward", "cpu")
@no_autocast
def update_(mem, q, v, present, alpha):
    return _C.memory_update_(mem, q, v, present, float(alpha))
