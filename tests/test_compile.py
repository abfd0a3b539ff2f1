"""The custom ops under torch.compile(fullgraph=True) and AMP autocast."""
import pytest
import torch

import mdrnet_fast
from mdrnet_fast import ops

from _util import fast_backends


def _inputs():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    mask = (torch.rand(2, 1, 8, 8) > 0.3).float()
    labels = torch.randint(0, 4, (2, 8, 8))
    return x, mask, labels


def _pipeline(x, mask, labels, w, wg, mem, gamma):
    """Every differentiable op once, as a model would chain them."""
    y, nm = ops.partial_conv2d(x, mask, w, None, 1, 1)
    y = ops.gated_conv2d(y, wg, None, 1, 1, mask=nm)[0]
    codes = ops.region_avg_pool(y, labels, 4)
    q_hat = ops.memory_read(codes, mem, 1.0)
    y = y + ops.region_broadcast(q_hat, labels, 4)
    y = y + ops.masked_patch_attention(y, y, y, mask, 2)
    return ops.spade_modulate(y, gamma, gamma)


@pytest.mark.slow
@pytest.mark.parametrize("backend", fast_backends("partial_conv2d"))
def test_fullgraph_compile_matches_eager(backend):
    x, mask, labels = _inputs()
    w, wg = torch.randn(4, 3, 3, 3, requires_grad=True), torch.randn(8, 4, 3, 3, requires_grad=True)
    mem, gamma = torch.randn(4, 16, 4), torch.randn(2, 4, 8, 8, requires_grad=True)
    args = (x, mask, labels, w, wg, mem, gamma)
    with mdrnet_fast.use_backend(backend):
        eager = _pipeline(*args)
        grads = torch.autograd.grad(eager.square().sum(), (x, w, wg, gamma))
        torch._dynamo.reset()
        compiled = torch.compile(_pipeline, fullgraph=True, backend="aot_eager")
        out = compiled(*args)
        cgrads = torch.autograd.grad(out.square().sum(), (x, w, wg, gamma))
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(cgrads, grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_inductor_compile_of_a_custom_op():
    """Inductor (the default compiler) keeps the custom op opaque and runs it."""
    x, mask, _ = _inputs()
    w = torch.randn(4, 3, 3, 3)
    with mdrnet_fast.use_backend(fast_backends("partial_conv2d")[0]):
        eager = ops.partial_conv2d(x, mask, w, None, 1, 1)[0]
        torch._dynamo.reset()
        out = torch.compile(lambda a: ops.partial_conv2d(a, mask, w, None, 1, 1)[0], fullgraph=True)(x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", fast_backends("partial_conv2d"))
def test_autocast_bf16_follows_reference(backend):
    x, mask, labels = _inputs()
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with mdrnet_fast.use_backend("reference"):
            ref = ops.partial_conv2d(x, mask, w, b, 1, 1)[0]
            ref_g = ops.gated_conv2d(x, torch.randn(8, 3, 3, 3), None, 1, 1)
        with mdrnet_fast.use_backend(backend):
            out = ops.partial_conv2d(x, mask, w, b, 1, 1)[0]
            out_g = ops.gated_conv2d(x, torch.randn(8, 3, 3, 3), None, 1, 1)
            out.float().sum().backward()
    assert out.dtype == ref.dtype == torch.bfloat16 and out_g.dtype == torch.bfloat16
    assert ((out.float() - ref.float()).abs().max() / ref.float().abs().max()) < 1e-2
    assert x.grad is not None and torch.isfinite(x.grad).all()



@pytest.mark.slow
@pytest.mark.parametrize("backend", fast_backends("partial_conv2d"))
def test_whole_model_compiles_fullgraph_and_equals_eager(backend):
    """torch.compile(model, fullgraph=True): the whole MDRNet forward is one graph (no graph break) under every
    fast backend here, and its output and parameter gradients equal eager's."""
    from mdrnet_fast.commands.common import PRESETS
    from mdrnet_fast.models import MDRNet

    torch.manual_seed(0)
    # eval mode: in training the forward also writes the memory bank, and each run below would see another one
    model = MDRNet(**(PRESETS["cpu-demo"] | {"image_size": 32})).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = (torch.rand(2, 1, 32, 32) > 0.3).float()
    with mdrnet_fast.use_backend(backend):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x, mask)
        assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
        eager = model(x, mask).output
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(eager.square().sum(), params, allow_unused=True)
        torch._dynamo.reset()
        out = torch.compile(model, fullgraph=True, backend="aot_eager")(x, mask).output
        cgrads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
    for p, a, b in zip(params, cgrads, grads):  # an unused parameter: None in eager, zeros compiled
        torch.testing.assert_close(a if a is not None else torch.zeros_like(p),
                                   b if b is not None else torch.zeros_like(p), rtol=1e-3, atol=1e-4)
