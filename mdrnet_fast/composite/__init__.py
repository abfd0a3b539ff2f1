"""Explicit-gradient PyTorch kernels: what the custom ops run where a fast backend has no kernel.

Unlike `reference/` (plain autograd, the definition), these compute each backward by formula, so a
fused kernel can replace the forward or the backward of an op independently.
"""
from . import gated_activation, memory, partial_conv, patch_attention, region_pool, spade  # noqa: F401 (registers)
