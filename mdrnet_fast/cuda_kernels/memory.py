"""Cosine memory on CUDA (csrc/cuda/memory.cu), with the cpu kernels' contract: the read and its backward
are one block per query row (warp-per-slot dot products, block softmax, weighted sum in slot order); the
in-place batch-mean update takes the argmax slot per query (lowest slot on ties) and then sums the chosen
values per (block, channel) in batch order, so it is deterministic."""
from .. import _C_cuda
from .._dispatch import register_kernel
from ..composite._common import no_autocast


@register_kernel("memory_read.forward", "cuda")
@no_autocast
def read(q, mem, tau):
    q_hat, attn = _C_cuda.memory_read_forward(q, mem, float(tau))
    return q_hat, attn


@register_kernel("memory_read.backward", "cuda")
@no_autocast
def read_backward(grad, q, mem, attn, tau):
    return _C_cuda.memory_read_backward(grad, q, mem, attn, float(tau))


@register_kernel("memory_update.forward", "cuda")
@no_autocast
def update_(mem, q, v, present, alpha):
    return _C_cuda.memory_update_(mem, q, v, present, float(alpha))
