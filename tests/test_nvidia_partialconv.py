"""mdrnet_fast.nn.PartialConv2d as a drop-in for NVIDIA's: the same constructor, state_dict, outputs, new masks
and gradients as NVIDIA's own module (loaded from MDRNET_FAST_NVIDIA_PARTIALCONV, see _nvidia_partialconv.py),
on every backend, fp64. Those comparisons are skipped when the variable is unset (CI has no copy of NVIDIA's
code); the loader and the benchmark's adapter are tested either way."""
import pytest
import torch

import mdrnet_fast
from mdrnet_fast import nn as mnn

import _nvidia_partialconv
from _util import fast_backends

NVIDIA = _nvidia_partialconv.load()
needs_nvidia = pytest.mark.skipif(NVIDIA is None, reason=f"set {_nvidia_partialconv.ENV} to NVIDIA's "
                                                         "models/partialconv2d.py to compare against it")

# (constructor args, kwargs, input shape, mask kind)
CASES = {
    "3x3-pad1-hard": ((3, 5, 3), dict(padding=1), (2, 3, 9, 11), "hard"),
    "3x3-no-mask-borders": ((3, 5, 3), dict(padding=1), (2, 3, 9, 11), None),
    "5x5-s2-soft-nobias": ((4, 6, 5), dict(stride=2, padding=2, bias=False), (2, 4, 13, 10), "soft"),
    "3x3-dil2-hard": ((3, 4, 3), dict(padding=2, dilation=2), (1, 3, 12, 12), "hard"),
    "multi-3x3-hard": ((4, 6, 3), dict(padding=1, multi_channel=True), (2, 4, 9, 8), "hard"),
    "multi-4x4-s2-soft": ((3, 5, 4), dict(stride=2, padding=1, multi_channel=True), (2, 3, 10, 10), "soft"),
    "multi-no-mask": ((3, 5, 3), dict(padding=1, multi_channel=True), (2, 3, 7, 9), None),
}


def _mask(kind, shape, multi):
    b, c, h, w = shape
    m = torch.rand(b, c if multi else 1, h, w, dtype=torch.float64)
    if kind == "hard":
        return (m > 0.35).double()
    m[m < 0.3] = 0  # soft, with holes
    return m


@needs_nvidia
@pytest.mark.parametrize("backend", ["reference", *fast_backends("partial_conv2d")])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_nvidia(name, backend):
    args, kwargs, shape, kind = CASES[name]
    torch.manual_seed(3)
    theirs = NVIDIA(*args, return_mask=True, **kwargs).double()
    ours = mnn.PartialConv2d(*args, return_mask=True, **kwargs).double()
    ours.load_state_dict(theirs.state_dict())  # the same parameters under the same names
    x = torch.randn(shape, dtype=torch.float64)
    mask = None if kind is None else _mask(kind, shape, kwargs.get("multi_channel", False))

    def run(module, *leaves):
        xi = x.clone().requires_grad_()
        out, new_mask = module(xi, mask) if mask is not None else module(xi)
        probe = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad((out * probe).sum(), [xi, *module.parameters()])
        return out.detach(), new_mask, grads

    want_out, want_mask, want_grads = run(theirs)
    with mdrnet_fast.use_backend(backend):
        out, new_mask, grads = run(ours)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-10)
    # without a mask NVIDIA keeps a (1, 1, Ho, Wo) mask for the whole batch; ours is per sample
    torch.testing.assert_close(new_mask, want_mask.expand_as(new_mask), rtol=0, atol=0)
    for g, want in zip(grads, want_grads):
        torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-10)


def test_loader_without_and_with_a_bad_path(monkeypatch):
    monkeypatch.delenv(_nvidia_partialconv.ENV, raising=False)
    assert _nvidia_partialconv.load() is None
    monkeypatch.setenv(_nvidia_partialconv.ENV, "/nonexistent/partialconv2d.py")
    with pytest.raises(FileNotFoundError, match=_nvidia_partialconv.ENV):
        _nvidia_partialconv.load()


def test_benchmark_adapter_differentiates_the_case_tensors():
    """bench's nvidia row builds the module once per weight and uses the case's own weight and bias; checked
    with our PartialConv2d in NVIDIA's place (the same constructor and forward)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import test_bench_ops

    run = test_bench_ops.nvidia_partial_conv(mnn.PartialConv2d)
    x = torch.randn(2, 3, 8, 8)
    w, bias = torch.randn(5, 3, 3, 3, requires_grad=True), torch.randn(5, requires_grad=True)
    mask = (torch.rand(2, 1, 8, 8) > 0.3).float()
    out, new_mask = run(x, mask, w, bias, 1, 1, 1, 1, False)
    want, want_mask = mdrnet_fast.ops.partial_conv2d(x, mask, w, bias, 1, 1)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(new_mask, want_mask)
    gw, gb = torch.autograd.grad(out.sum(), [w, bias])
    assert gw.shape == w.shape and gb.shape == bias.shape
    assert torch.equal(run(x, mask, w, bias, 1, 1, 1, 1, False)[0], out)  # the second call reuses the module
