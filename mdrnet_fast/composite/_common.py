"""Helpers shared by the composite kernels."""
import contextlib
import functools

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def out_format(x: torch.Tensor) -> torch.memory_format:
    """Outputs keep channels_last when the input is channels_last (and not also plain contiguous)."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled for any device type: False for those without autocast (meta, whose tensors build
    a model's shapes before it is materialised), where torch raises."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def no_autocast(fn):
    """Kernels run in the dtypes they are given: the public op already applied the autocast policy."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        devices = {a.device.type for a in args if isinstance(a, torch.Tensor)}
        active = [d for d in devices if autocast_enabled(d)]
        if not active:  # the common case: no context to enter (it costs more than a small kernel)
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for d in active:
                stack.enter_context(torch.autocast(d, enabled=False))
            return fn(*args, **kwargs)

    return wrapper
