"""nn modules: NVIDIA-compatible PartialConv2d, the others, and state_dicts shared across backends."""
import pytest
import torch

import mdrnet_fast
from mdrnet_fast import nn as mnn
from mdrnet_fast import reference as R

from _util import fast_backends


def _modules():
    return {
        "PartialConv2d": (lambda: mnn.PartialConv2d(3, 4, 3, padding=1, multi_channel=True, return_mask=True),
                          lambda: (torch.randn(2, 3, 9, 8), (torch.rand(2, 3, 9, 8) > 0.3).float())),
        "GatedConv2d": (lambda: mnn.GatedConv2d(3, 4, 3, padding=1),
                        lambda: (torch.randn(2, 3, 9, 8), (torch.rand(2, 1, 9, 8) > 0.3).float())),
        "RegionAvgPool": (lambda: mnn.RegionAvgPool(5), lambda: (torch.randn(2, 3, 9, 8), torch.randint(0, 5, (2, 9, 8)))),
        "DisentangledMemory": (lambda: mnn.DisentangledMemory(6, num_classes=5, slots=16).eval(),
                               lambda: (torch.randn(2, 5, 6),)),
        "MaskedCorrelationMining": (lambda: mnn.MaskedCorrelationMining(4, patch_size=2),
                                    lambda: (torch.randn(2, 4, 9, 8), (torch.rand(2, 1, 18, 16) > 0.3).float())),
        "SPADE": (lambda: mnn.SPADE(4, 5, hidden_channels=8), lambda: (torch.randn(2, 4, 9, 8), torch.randn(2, 5, 5, 4))),
    }


@pytest.mark.parametrize("name", sorted(_modules()))
def test_state_dict_loads_across_backends(name):
    make, inputs = _modules()[name]
    args = inputs()
    with mdrnet_fast.use_backend("reference"):
        a = make()
        ref = a(*args)
    for backend in fast_backends("partial_conv2d"):
        b = make()
        b.load_state_dict(a.state_dict())
        assert a.state_dict().keys() == b.state_dict().keys()
        with mdrnet_fast.use_backend(backend):
            out = b(*args)
        for o, r in zip(out if isinstance(out, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,)):
            torch.testing.assert_close(o, r, rtol=1e-5, atol=1e-5)


def test_partial_conv2d_is_nvidia_compatible():
    m = mnn.PartialConv2d(3, 4, kernel_size=3, stride=1, padding=1, bias=True)
    assert set(m.state_dict()) == {"weight", "bias"} and isinstance(m, torch.nn.Conv2d)
    x, mask = torch.randn(2, 3, 8, 8), (torch.rand(2, 1, 8, 8) > 0.4).float()
    out = m(x, mask)
    want, _ = R.partial_conv2d(x, mask, m.weight, m.bias, 1, 1)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert m(x).shape == (2, 4, 8, 8)  # mask_in=None: all valid
    m2 = mnn.PartialConv2d(3, 4, 3, padding=1, return_mask=True, multi_channel=True)
    out, new_mask = m2(x, mask.expand(-1, 3, -1, -1))
    assert new_mask.shape == (2, 4, 8, 8)


def test_memory_updates_in_training_only():
    mem = mnn.DisentangledMemory(6, num_classes=3, slots=8, alpha=0.5)
    q, v, present = torch.randn(4, 3, 6), torch.randn(4, 3, 6), torch.ones(4, 3, dtype=torch.bool)
    before = mem.memory.clone()
    mem.eval()(q, v, present)
    assert torch.equal(mem.memory, before)
    mem.train()(q, v, present)
    assert not torch.equal(mem.memory, before)
    assert not mem.memory.requires_grad and "memory" in mem.state_dict()


def test_mcm_enhances_holes_only():
    m = mnn.MaskedCorrelationMining(4, patch_size=2)
    f = torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(m(f, torch.ones(1, 1, 8, 8)), f + m.out.bias.view(1, -1, 1, 1))
