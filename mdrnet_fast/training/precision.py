"""The precision of a training run: fp32 master weights always; bf16 or fp16 autocast around the forward and
the losses; a GradScaler for fp16 only (bf16 has fp32's exponent range, so its gradients do not underflow)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..inpainting.precision import cpu_has_native_bf16, resolve_precision

TRAIN_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_training_precision(precision: str, device) -> Tuple[Optional[torch.dtype], str]:
    """(autocast dtype or None for fp32, why it was taken) for `precision` on `device`.

    auto = bf16 on a CUDA GPU that supports it or a CPU that computes bf16 natively, else fp32 (as inference's
    `resolve_precision`). fp16 needs a CUDA device: ValueError on a CPU, which has no fp16 arithmetic (autocast
    fp16 there ran our model several times slower than bf16) and whose bf16 is as narrow a format anyway.
    """
    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(TRAIN_PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA GPU, this run is on {device.type}: use bf16 (or auto)")
        return torch.float16, "asked for (with a gradient scaler)"
    if precision != "auto":
        return resolve_precision(precision, device), "asked for"
    dtype = resolve_precision("auto", device)
    if device.type == "cuda":
        why = "this GPU supports bf16" if dtype is not None else "this GPU has no bf16"
    elif device.type == "cpu":
        why = ("this CPU computes bf16 natively (AVX-512 BF16 or AMX)" if cpu_has_native_bf16()
               else "this CPU has no native bf16, where emulated bf16 is slower than fp32")
    else:
        why = f"no bf16 rule for {device.type}"
    return dtype, f"auto: {why}"
