"""The precision of an inference: fp32, or bf16 autocast where the hardware computes bf16 natively."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPU computes bf16 dot products itself. Without them oneDNN emulates bf16, which
    is slower than fp32, so `auto` stays in fp32 there."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    try:
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    except RuntimeError:  # an unusual build without cpuinfo
        return False


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for `precision` on `device`, or None for fp32.

    auto = bf16 on a CPU with native bf16 (cpu_has_native_bf16) and on a CUDA GPU that supports bf16, else fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """"fp32" for None (no autocast), else the autocast dtype's short name."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """torch.autocast for a low-precision dtype, a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
