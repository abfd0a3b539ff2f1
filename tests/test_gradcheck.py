"""fp64 gradcheck of every custom backward, through the public ops on each fast backend."""
import pytest
import torch

import mdrnet_fast
from mdrnet_fast import ops

from _util import fast_backends

D = dict(dtype=torch.float64, requires_grad=True)


def _gc(fn, *inputs):
    # the Triton interpreter runs each kernel launch in Python: the full Jacobian would take minutes,
    # so Triton kernels get gradcheck's fast mode (a random projection of the Jacobian)
    fast = mdrnet_fast.get_backend() == "triton"
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=fast)


@pytest.mark.parametrize("multi_channel", [False, True])
def test_partial_conv2d(multi_channel):
    x, w, b = torch.randn(2, 4, 7, 6, **D), torch.randn(4, 2, 3, 3, **D), torch.randn(4, **D)
    mask = torch.rand(2, 4 if multi_channel else 1, 7, 6, dtype=torch.float64)
    mask[mask < 0.3] = 0
    for backend in fast_backends("partial_conv2d"):
        with mdrnet_fast.use_backend(backend):
            _gc(lambda x, w, b: ops.partial_conv2d(x, mask, w, b, 2, 1, 1, 2, multi_channel)[0], x, w, b)
            _gc(lambda x, w: ops.partial_conv2d(x, mask, w, None, 1, 2, 2, 2, multi_channel)[0], x, w)


@pytest.mark.parametrize("activation", ["elu", "leaky_relu", "relu", "none"])
def test_gated_conv2d(activation):
    x, w, b = torch.randn(2, 3, 6, 5, **D), torch.randn(4, 3, 3, 3, **D), torch.randn(4, **D)
    mask = torch.rand(2, 1, 6, 5, dtype=torch.float64)
    for backend in fast_backends("gated_activation"):
        with mdrnet_fast.use_backend(backend):
            _gc(lambda x, w, b: ops.gated_conv2d(x, w, b, 1, 1, activation=activation), x, w, b)
            _gc(lambda x, w, b: ops.gated_conv2d(x, w, b, 1, 1, activation=activation, mask=mask)[0], x, w, b)


def test_region_ops():
    feat, codes = torch.randn(2, 3, 5, 6, **D), torch.randn(2, 4, 3, **D)
    labels = torch.randint(0, 4, (2, 5, 6))
    labels[labels == 3] = 0
    soft = torch.rand(2, 4, 5, 6, dtype=torch.float64)
    for backend in set(fast_backends("region_pool")) | set(fast_backends("region_broadcast")):
        with mdrnet_fast.use_backend(backend):
            for seg in (labels, soft):
                _gc(lambda f: ops.region_avg_pool(f, seg, 4), feat)
                _gc(lambda c: ops.region_broadcast(c, seg, 4), codes)
            # the backward of each is the other: check second derivatives too
            assert torch.autograd.gradgradcheck(lambda f: ops.region_avg_pool(f, labels, 4), (feat,),
                                                fast_mode=backend == "triton")


def test_memory_read():
    q, mem = torch.randn(2, 3, 6, **D), torch.randn(3, 9, 6, dtype=torch.float64)
    for backend in fast_backends("memory_read"):
        with mdrnet_fast.use_backend(backend):
            _gc(lambda q: ops.memory_read(q, mem, 0.6), q)


def test_masked_patch_attention():
    theta, phi, g = torch.randn(2, 2, 5, 7, **D), torch.randn(2, 2, 5, 7, **D), torch.randn(2, 3, 5, 7, **D)
    mask = (torch.rand(2, 1, 5, 7) > 0.5).double()
    for backend in fast_backends("patch_attention"):
        with mdrnet_fast.use_backend(backend):
            _gc(lambda a, b, c: ops.masked_patch_attention(a, b, c, mask, 2), theta, phi, g)


def test_spade_modulate():
    x, gamma, beta = (torch.randn(2, 3, 4, 5, **D) for _ in range(3))
    for backend in fast_backends("spade_modulate"):
        with mdrnet_fast.use_backend(backend):
            _gc(lambda x, g, b: ops.spade_modulate(x, g, b), x, gamma, beta)
            _gc(lambda x: ops.spade_modulate(x, gamma.detach(), beta.detach()), x)
