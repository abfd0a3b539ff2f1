"""The C++ kernels of the `cpu` backend, called directly, and run again over a poisoned allocator."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import mdrnet_fast

pytestmark = pytest.mark.skipif(not mdrnet_fast.backends()["cpu"]["available"], reason="C++ extension not built")


@pytest.mark.parametrize("k,s,p,d", [(3, 1, 1, 1), (5, 2, 2, 1), (4, 1, 3, 2), (1, 1, 0, 1), (7, 3, 3, 2)])
@pytest.mark.parametrize("channels", [1, 3])
def test_mask_window_sum_matches_conv(k, s, p, d, channels):
    from mdrnet_fast import _C

    mask = torch.rand(2, channels, 13, 11, dtype=torch.float64)
    want = F.conv2d(mask.sum(1, keepdim=True), torch.ones(1, 1, k, k, dtype=torch.float64), None, s, p, d)
    got = _C.partial_conv_mask_sum(mask, k, k, s, s, p, p, d, d, want.shape[2], want.shape[3])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=300, deadline=None)
@given(kh=st.integers(1, 7), kw=st.integers(1, 7), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 8), pw=st.integers(0, 8), dh=st.integers(1, 3), dw=st.integers(1, 3),
       h=st.integers(1, 12), w=st.integers(1, 12), channels=st.sampled_from([1, 3]), binary=st.booleans(),
       fp64=st.booleans())
def test_mask_running_sums_any_geometry(kh, kw, sh, sw, ph, pw, dh, dw, h, w, channels, binary, fp64):
    """The prefix-sum windows against a direct conv: rectangular kernels, windows clipped on either side
    or lying entirely in the padding, strides and dilations that skip rows."""
    from mdrnet_fast import _C

    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    assume(ho >= 1 and wo >= 1)
    dtype = torch.float64 if fp64 else torch.float32
    mask = torch.rand(2, channels, h, w, generator=torch.Generator().manual_seed(h * 13 + w), dtype=dtype)
    if binary:
        mask = (mask > 0.4).to(dtype)
    want = F.conv2d(mask.double().sum(1, keepdim=True), torch.ones(1, 1, kh, kw, dtype=torch.float64), None,
                    (sh, sw), (ph, pw), (dh, dw))
    got = _C.partial_conv_mask_sum(mask, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo)
    tol = 1e-12 if fp64 or binary else 1e-6
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * kh * kw * channels)


def test_kernel_checks_its_arguments():
    from mdrnet_fast import _C

    raw, mask = torch.randn(2, 4, 6, 6), torch.ones(2, 1, 6, 6)
    with pytest.raises(RuntimeError, match="bias"):
        _C.partial_conv_epilogue_forward(raw, mask, torch.randn(5), 3, 3, 1, 1, 1, 1, 1, 1, 9.0, False)
    with pytest.raises(RuntimeError, match="raw"):
        _C.partial_conv_epilogue_forward(raw[0], mask, None, 3, 3, 1, 1, 1, 1, 1, 1, 9.0, False)


@pytest.mark.slow
def test_parity_with_poisoned_allocations():
    """glibc fills fresh allocations with garbage (and never hands out zeroed mmap pages here), so an
    output element a kernel forgets to write shows up as a parity failure."""
    env = dict(os.environ, MALLOC_PERTURB_="165", MALLOC_MMAP_THRESHOLD_="4294967296", MALLOC_TOP_PAD_="0")
    here = os.path.dirname(__file__)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           os.path.join(here, "test_parity.py"), os.path.join(here, "test_cpu_elementwise.py")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.parametrize("grad_layout", ["nchw", "channels_last"])
def test_multi_channel_masks_keep_channels_last(grad_layout):
    """A channels_last multi-channel mask is read in place and the new mask comes back channels_last (the next
    layer concatenates it with channels_last features); the bias gradient reads it in either grad layout."""
    from mdrnet_fast import _C

    gen = torch.Generator().manual_seed(5)
    cl = torch.channels_last
    raw = torch.randn(2, 6, 7, 9, generator=gen, dtype=torch.float64).contiguous(memory_format=cl)
    mask = (torch.rand(2, 4, 7, 9, generator=gen, dtype=torch.float64) > 0.4).double()
    bias = torch.randn(6, generator=gen, dtype=torch.float64)
    args = (3, 3, 1, 1, 1, 1, 1, 1, 36.0, True)
    out_cl, nm_cl, gs_cl = _C.partial_conv_epilogue_forward(raw, mask.contiguous(memory_format=cl), bias, *args)
    out, nm, gs = _C.partial_conv_epilogue_forward(raw.contiguous(), mask, bias, *args)
    assert nm_cl.is_contiguous(memory_format=cl) and out_cl.is_contiguous(memory_format=cl)
    assert torch.equal(nm_cl, nm) and torch.equal(gs_cl, gs) and torch.equal(out_cl, out)
    go = torch.randn(2, 6, 7, 9, generator=gen, dtype=torch.float64)
    go = go.contiguous(memory_format=cl) if grad_layout == "channels_last" else go
    gr_cl, gb_cl = _C.partial_conv_epilogue_backward(go, gs, nm_cl, True)
    gr, gb = _C.partial_conv_epilogue_backward(go.contiguous(), gs, nm, True)
    torch.testing.assert_close(gr_cl, gr, rtol=0, atol=0)
    torch.testing.assert_close(gb_cl, gb, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(gb, (go * nm).sum((0, 2, 3)), rtol=1e-12, atol=1e-12)
    # and through the public op
    x = torch.randn(2, 4, 7, 9, generator=gen, dtype=torch.float64).contiguous(memory_format=cl)
    w = torch.randn(6, 4, 3, 3, generator=gen, dtype=torch.float64)
    with mdrnet_fast.use_backend("cpu"):
        o, n = mdrnet_fast.ops.partial_conv2d(x, mask, w, bias, 1, 1, multi_channel=True)
    ro, rn = mdrnet_fast.reference.partial_conv2d(x, mask, w, bias, [1, 1], [1, 1], [1, 1], 1, True)
    assert n.is_contiguous(memory_format=cl) and o.is_contiguous(memory_format=cl)
    torch.testing.assert_close(o, ro, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(n, rn, rtol=0, atol=0)
