"""The C++ kernels of the `cpu` backend, called directly, and run again over a poisoned allocator."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

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
