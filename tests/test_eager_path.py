"""The eager fast path (ops/_register.call): in plain eager calls the ops run their own implementation,
setup_context and backward as an autograd.Function instead of a dispatcher round trip through the custom op.
It must give the custom op's results bit for bit, and step aside whenever anything but eager PyTorch looks on
(FakeTensor and other dispatch modes, torch-function modes, tensor subclasses, torch.compile: test_compile.py)."""
import pytest
import torch

import mdrnet_fast
from mdrnet_fast import ops
from mdrnet_fast.ops import _register
from mdrnet_fast.ops.gated_conv import gated_activation_op, gated_partial_conv2d_op
from mdrnet_fast.ops.memory import memory_read_op, memory_update_op
from mdrnet_fast.ops.partial_conv import partial_conv2d_op
from mdrnet_fast.ops.patch_attention import patch_attention_op
from mdrnet_fast.ops.region_pool import region_broadcast_op, region_pool_op
from mdrnet_fast.ops.spade import spade_modulate_op

from _util import fast_backends

BACKEND = fast_backends("partial_conv2d")[0]


def test_every_differentiable_op_has_the_fast_path_and_the_update_does_not():
    for op in (gated_activation_op, gated_partial_conv2d_op, memory_read_op, partial_conv2d_op, patch_attention_op,
               region_broadcast_op, region_pool_op, spade_modulate_op):
        assert op in _register._EAGER, op
    # memory_update_ writes mem in place: only the custom op bumps mem's version counter, which lets autograd
    # refuse a backward through a read of the old mem
    assert memory_update_op not in _register._EAGER


def _case(op_name, device, backend):
    dt = dict(dtype=torch.float64, device=device)
    x = torch.randn(2, 4, 7, 6, **dt)
    mask = (torch.rand(2, 1, 7, 6, **dt) > 0.3).double()
    w = torch.randn(6, 4, 3, 3, **dt)
    b = torch.randn(6, **dt)
    labels = torch.randint(0, 3, (2, 7, 6), device=device)
    cases = {
        "partial_conv2d": (partial_conv2d_op, [x, mask, w, b, [1, 1], [1, 1], [1, 1], 1, False, backend], (0, 2, 3)),
        "gated_activation": (gated_activation_op, [x, "elu", 0.2, backend], (0,)),
        "gated_partial_conv2d": (gated_partial_conv2d_op,
                                 [x, mask, w, b, [1, 1], [1, 1], [1, 1], 1, "elu", 0.2, backend], (0, 2, 3)),
        "region_pool": (region_pool_op, [x, labels, 3, True, backend], (0,)),
        "region_broadcast": (region_broadcast_op, [torch.randn(2, 3, 4, **dt), labels, 3, backend], (0,)),
        "memory_read": (memory_read_op, [torch.randn(2, 3, 4, **dt), torch.randn(3, 5, 4, **dt), 0.5, backend], (0,)),
        "patch_attention": (patch_attention_op, [x, x.flip(-1), x.flip(-2), mask, 2, 0.25, backend], (0, 1, 2)),
        "spade_modulate": (spade_modulate_op, [x, torch.randn_like(x), torch.randn_like(x), 1e-5, backend], (0, 1, 2)),
    }
    return cases[op_name]


_CUDA = torch.cuda.is_available() and mdrnet_fast.backends()["cuda"]["available"]
DEVICES = [pytest.param("cpu", BACKEND, id="cpu"),
           pytest.param("cuda", "cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
               not _CUDA, reason="needs a CUDA device and mdrnet_fast._C_cuda")])]


@pytest.mark.parametrize("device,backend", DEVICES)
@pytest.mark.parametrize("op_name", ["partial_conv2d", "gated_activation", "gated_partial_conv2d", "region_pool",
                                     "region_broadcast", "memory_read", "patch_attention", "spade_modulate"])
def test_fast_path_equals_the_custom_op_bit_for_bit(op_name, device, backend):
    op, args, grad_idx = _case(op_name, device, backend)
    results = []
    for use_fast in (True, False):
        leaves = [a.detach().clone().requires_grad_(i in grad_idx) if isinstance(a, torch.Tensor) else a
                  for i, a in enumerate(args)]
        outs = _register.call(op, *leaves) if use_fast else op(*leaves)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        grads = torch.autograd.grad(outs[0].square().sum(), [leaves[i] for i in grad_idx])
        results.append([o.detach() for o in outs] + list(grads))
    assert _register.eager_only([t for t in args if isinstance(t, torch.Tensor)])
    for fast, slow in zip(*results):
        if device == "cpu":
            assert torch.equal(fast, slow)
        else:  # cuDNN may pick a non-deterministic (atomic) algorithm for a weight gradient
            torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


def test_steps_aside_for_modes_and_subclasses():
    x = torch.randn(2, 3)
    assert _register.eager_only([x, torch.nn.Parameter(x)])

    class Sub(torch.Tensor):
        pass

    assert not _register.eager_only([x.as_subclass(Sub)])
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        assert not _register.eager_only([torch.empty(2)])
    with torch.device("cpu"):  # a torch-function mode
        assert not _register.eager_only([x])


def test_fake_tensors_run_the_custom_op():
    """Under FakeTensorMode the public op falls back to the registered op and its fake implementation."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), mdrnet_fast.use_backend(BACKEND):
        x, mask = torch.randn(2, 4, 9, 8), torch.ones(2, 1, 9, 8)
        out, new_mask = ops.partial_conv2d(x, mask, torch.randn(5, 4, 3, 3), None, 1, 1)
        codes = ops.region_avg_pool(x, torch.zeros(2, 9, 8, dtype=torch.long), 3)
    assert out.shape == (2, 5, 9, 8) and new_mask.shape == (2, 1, 9, 8) and codes.shape == (2, 3, 4)


def test_update_after_read_is_still_refused_by_autograd():
    """The memory read saves mem for its backward; an in-place update of mem before that backward must be
    caught by autograd's version check, as with the reference's in-place update."""
    mem = torch.randn(3, 5, 4)
    q = torch.randn(2, 3, 4, requires_grad=True)
    with mdrnet_fast.use_backend(BACKEND):
        q_hat = ops.memory_read(q, mem, 0.5)
        ops.memory_update_(mem, q.detach(), torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), 0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        q_hat.sum().backward()
