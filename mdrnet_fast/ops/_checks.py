"""Argument checks for the public ops: bad input is a ValueError/TypeError naming the argument and
what was expected, before any kernel runs (never a crash, a NaN or a wrong answer)."""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import torch

from ..composite._common import autocast_enabled

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(name: str, t, ndim: Optional[int] = None, floating: bool = True) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if floating and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")
    return t


def same_device(**named: Optional[torch.Tensor]) -> torch.device:
    devices = {k: v.device for k, v in named.items() if v is not None}
    first = next(iter(devices.values()))
    for k, d in devices.items():
        if d != first:
            listing = ", ".join(f"{n} on {dv}" for n, dv in devices.items())
            raise ValueError(f"all tensors must be on one device, got {listing}")
    return first


def batch(name: str, t: torch.Tensor, b: int, allow_one: bool = False) -> None:
    if t.shape[0] != b and not (allow_one and t.shape[0] == 1):
        raise ValueError(f"{name} must have batch size {b}{' (or 1)' if allow_one else ''}, got shape {tuple(t.shape)}")


def spatial(name: str, t: torch.Tensor, hw: Sequence[int], ref: str) -> None:
    if tuple(t.shape[-2:]) != tuple(hw):
        raise ValueError(f"{name} must have the spatial size of {ref} {tuple(hw)}, got shape {tuple(t.shape)}")


def positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def int_pair(name: str, v, minimum: int) -> list:
    """An int or pair of ints (each >= minimum), returned as a list of two."""
    vals = [v, v] if isinstance(v, int) and not isinstance(v, bool) else list(v) if isinstance(v, (tuple, list)) else None
    if vals is not None and len(vals) == 1:
        vals = vals * 2
    if vals is None or len(vals) != 2 or not all(isinstance(e, int) and not isinstance(e, bool) and e >= minimum for e in vals):
        raise ValueError(f"{name} must be an int or a pair of ints >= {minimum}, got {v!r}")
    return vals


def common_dtype(*ts: Optional[torch.Tensor]) -> torch.dtype:
    """The promoted floating dtype of the given tensors (None entries skipped)."""
    return functools.reduce(torch.promote_types, [t.dtype for t in ts if t is not None])


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The low-precision dtype when autocast is on for this device type (conv-like ops follow it)."""
    if autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None
