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
