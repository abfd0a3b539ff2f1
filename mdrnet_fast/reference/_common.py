"""Small helpers shared by the reference ops."""
import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Reductions accumulate in fp32 (fp64 stays fp64), as SPEC's conventions require."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def pair(v, name: str) -> tuple:
    """An int or a pair of ints as a 2-tuple (conv-style arguments)."""
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(e) for e in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t
