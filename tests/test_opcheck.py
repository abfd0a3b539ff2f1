"""torch.library.opcheck on every registered op, for the composite kernels and each fast backend."""
import pytest
import torch

import mdrnet_fast
from mdrnet_fast._dispatch import FAST_BACKENDS, backend_available

OPS = torch.ops.mdrnet_fast


def _backends():
    out = ["composite"]
    for b in FAST_BACKENDS:
        if backend_available(b)[0] and (b != "triton" or mdrnet_fast.backends()["triton"]["kernels"]):
            out.append(b)
    return out


def _samples():
    f = lambda *s, rg=True: torch.randn(*s, requires_grad=rg)  # noqa: E731
    mask = (torch.rand(2, 1, 7, 6) > 0.4).float()
    labels = torch.randint(0, 4, (2, 7, 6))
    y = f(2, 6, 5, 5)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    return {
        "partial_conv2d": (OPS.partial_conv2d, lambda b: (f(2, 3, 7, 6), mask, f(4, 3, 3, 3), f(4), [1, 1], [1, 1], [1, 1], 1, False, b)),
        "partial_conv2d_multi": (OPS.partial_conv2d, lambda b: (f(2, 4, 7, 6), mask.expand(-1, 4, -1, -1).contiguous(), f(6, 2, 3, 3), None, [2, 1], [1, 0], [1, 2], 2, True, b)),
        "partial_conv2d_backward": (OPS.partial_conv2d_backward, lambda b: (f(2, 4, 7, 6, rg=False), f(2, 3, 7, 6, rg=False), mask, f(4, 3, 3, 3, rg=False), torch.rand(2, 1, 7, 6), mask, [1, 1], [1, 1], [1, 1], 1, True, True, True, b)),
        # channels_last x and weight: the gradients come back in their layouts (the fake says so too)
        "partial_conv2d_backward_cl": (OPS.partial_conv2d_backward, lambda b: (cl(f(2, 4, 7, 6, rg=False)), cl(f(2, 3, 7, 6, rg=False)), cl(mask), cl(f(4, 3, 3, 3, rg=False)), torch.rand(2, 1, 7, 6), mask, [1, 1], [1, 1], [1, 1], 1, True, True, True, b)),
        "gated_partial_conv2d_backward_cl": (OPS.gated_partial_conv2d_backward, lambda b: (cl(f(2, 4, 7, 6, rg=False)), cl(f(2, 3, 7, 6, rg=False)), cl(mask), cl(f(8, 3, 3, 3, rg=False)), torch.rand(2, 1, 7, 6), mask, cl(f(2, 8, 7, 6, rg=False)), [1, 1], [1, 1], [1, 1], 1, "elu", 0.2, True, True, True, b)),
        "gated_partial_conv2d": (OPS.gated_partial_conv2d, lambda b: (f(2, 3, 7, 6), mask, f(8, 3, 3, 3), f(8), [1, 1], [1, 1], [1, 1], 1, "elu", 0.2, b)),
        "gated_partial_conv2d_groups": (OPS.gated_partial_conv2d, lambda b: (f(2, 4, 7, 6), mask, f(6, 2, 3, 3), None, [2, 1], [1, 0], [1, 2], 2, "leaky_relu", 0.1, b)),
        "gated_partial_conv2d_backward": (OPS.gated_partial_conv2d_backward, lambda b: (f(2, 4, 7, 6, rg=False), f(2, 3, 7, 6, rg=False), mask, f(8, 3, 3, 3, rg=False), torch.rand(2, 1, 7, 6), mask, f(2, 8, 7, 6, rg=False), [1, 1], [1, 1], [1, 1], 1, "elu", 0.2, True, True, True, b)),
        "gated_activation": (OPS.gated_activation, lambda b: (y, "elu", 0.2, b)),
        "gated_activation_backward": (OPS.gated_activation_backward, lambda b: (f(2, 3, 5, 5, rg=False), y.detach(), "leaky_relu", 0.2, b)),
        "region_pool": (OPS.region_pool, lambda b: (f(2, 5, 7, 6), labels, 4, True, b)),
        "region_pool_soft": (OPS.region_pool, lambda b: (f(2, 5, 7, 6), torch.rand(2, 4, 7, 6), 4, False, b)),
        "region_broadcast": (OPS.region_broadcast, lambda b: (f(2, 4, 5), labels, 4, b)),
        "memory_read": (OPS.memory_read, lambda b: (f(2, 4, 8), torch.randn(4, 16, 8), 0.5, b)),
        "memory_read_backward": (OPS.memory_read_backward, lambda b: (f(2, 4, 8, rg=False), f(2, 4, 8, rg=False), torch.randn(4, 16, 8), torch.rand(2, 4, 16).softmax(-1), 0.5, b)),
        "memory_update_": (OPS.memory_update_, lambda b: (torch.randn(4, 16, 8), torch.randn(3, 4, 8), torch.randn(3, 4, 8), torch.rand(3, 4) > 0.3, 0.9, b)),
        "masked_patch_attention": (OPS.masked_patch_attention, lambda b: (f(2, 3, 7, 6), f(2, 3, 7, 6), f(2, 4, 7, 6), mask, 2, 0.4, b)),
        "masked_patch_attention_backward": (OPS.masked_patch_attention_backward, lambda b: (f(2, 4, 7, 6, rg=False), f(2, 3, 7, 6, rg=False), f(2, 3, 7, 6, rg=False), f(2, 4, 7, 6, rg=False), mask, f(2, 4, 7, 6, rg=False), torch.randn(2, 12), 2, 0.4, b)),
        "spade_modulate": (OPS.spade_modulate, lambda b: (f(2, 3, 5, 4), f(2, 3, 5, 4), f(2, 3, 5, 4), 1e-5, b)),
        "spade_modulate_backward": (OPS.spade_modulate_backward, lambda b: (f(2, 3, 5, 4, rg=False), f(2, 3, 5, 4, rg=False), f(2, 3, 5, 4, rg=False), torch.randn(2, 3), torch.rand(2, 3) + 0.5, [True, False, True], b)),
    }


SAMPLES = _samples()


def test_every_registered_op_has_a_sample():
    registered = {name for name in dir(OPS) if not name.startswith("_") and isinstance(getattr(OPS, name), torch._ops.OpOverloadPacket)}
    covered = {op._qualified_op_name.split("::")[1] for op, _ in SAMPLES.values()}
    assert registered <= covered, f"ops without an opcheck sample: {registered - covered}"


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_opcheck(name, backend):
    op, make = SAMPLES[name]
    torch.library.opcheck(op, make(backend))
