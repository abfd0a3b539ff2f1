"""Shared test helpers: SPEC tolerances, the backends to test, and reference comparisons."""
import torch

import mdrnet_fast
from mdrnet_fast._dispatch import has_kernel

# SPEC "Numerical agreement": max|fast - ref| / max(|ref|, 1e-6)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
LOW = (torch.bfloat16, torch.float16)


def rel_err(fast, ref, floor=1e-6):
    """max|fast - ref| / max(max|ref|, floor)."""
    fast, ref = fast.double(), ref.double()
    if ref.numel() == 0:
        return 0.0
    return ((fast - ref).abs().max() / ref.abs().max().clamp_min(floor)).item()


def assert_close(fast, ref, dtype, what="", tol=TOL, floor=1e-6):
    assert fast.shape == ref.shape, f"{what}: shape {tuple(fast.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(fast).all(), f"{what}: non-finite values"
    err = rel_err(fast, ref, floor)
    assert err <= tol[dtype], f"{what}: relative error {err:.3g} > {tol[dtype]:.0e} ({dtype})"


def fast_backends(family):
    """Fast backends to test on CPU tensors for a kernel family: `cpu` always (its kernel, or the composite
    fallback), `triton` where it has a kernel (it runs under TRITON_INTERPRET=1)."""
    out = []
    if mdrnet_fast.backends()["cpu"]["available"]:
        out.append("cpu")
    if has_kernel(f"{family}.forward", "triton"):
        out.append("triton")
    return out


def layouts(t, layout):
    """The same values as `t` in another memory layout."""
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "noncontig":
        big = torch.cat([t, t], dim=-1)  # a strided view holding t's values
        return big[..., : t.shape[-1]]
    return t.contiguous()


def outputs_and_grads(fn, kwargs, grad_names, seed=1):
    """Runs fn(**kwargs); returns the float outputs and the gradients of a random projection of them."""
    out = fn(**kwargs)
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.is_floating_point()]
    gen = torch.Generator().manual_seed(seed)
    loss = 0
    for o in outs:
        if o.requires_grad:
            w = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
            loss = loss + (o * w).sum()
    grads = []
    if grad_names:
        grads = torch.autograd.grad(loss, [kwargs[n] for n in grad_names], allow_unused=False)
    return [o.detach() for o in outs], [g.detach() for g in grads]
