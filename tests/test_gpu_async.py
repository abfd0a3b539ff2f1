"""On a GPU the ops must stay asynchronous: no host sync in a forward or backward (a sync drains the launch
queue, and torch.cuda.graph cannot capture it), and every op must capture into a CUDA graph and replay to
the eager result. The region ops' label range check is the one documented sync (labels_checked=True skips
it, and it is skipped while a graph is being captured)."""
import contextlib

import pytest
import torch

import mdrnet_fast
from mdrnet_fast import ops
from mdrnet_fast._dispatch import has_kernel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

N = 5  # region classes


def _inputs(dev):
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=dev, generator=g)  # noqa: E731
    return {
        "x": r(2, 16, 17, 19), "mask": (torch.rand(2, 1, 17, 19, device=dev, generator=g) > 0.3).float(),
        "w": r(8, 16, 3, 3) * 0.1, "b": r(8), "gamma": r(2, 16, 17, 19), "beta": r(2, 16, 17, 19),
        "labels": torch.randint(0, N, (2, 17, 19), device=dev, generator=g), "codes": r(2, N, 16),
        "q": r(2, N, 16), "mem": r(N, 7, 16), "v": r(2, N, 16),
        "present": torch.rand(2, N, device=dev, generator=g) > 0.3,
    }


# name -> (family for resolve/has_kernel, differentiable inputs, f(inputs) -> tuple of outputs)
CASES = {
    "partial_conv2d": ("partial_conv2d", ("x", "w", "b"),
                       lambda t: ops.partial_conv2d(t["x"], t["mask"], t["w"], t["b"], 1, 1)),
    "gated_conv2d": ("gated_activation", ("x", "w", "b"),
                     lambda t: (ops.gated_conv2d(t["x"], t["w"], t["b"], 1, 1),)),
    "gated_conv2d_masked": ("gated_activation", ("x", "w", "b"),
                            lambda t: ops.gated_conv2d(t["x"], t["w"], t["b"], 1, 1, mask=t["mask"])),
    "region_avg_pool": ("region_pool", ("x",),
                        lambda t: (ops.region_avg_pool(t["x"], t["labels"], N, labels_checked=True),)),
    "region_avg_pool_soft": ("region_pool", ("x",),
                             lambda t: (ops.region_avg_pool(t["x"], t["gamma"][:, :N].sigmoid()),)),
    "region_broadcast": ("region_broadcast", ("codes",),
                         lambda t: (ops.region_broadcast(t["codes"], t["labels"], N, labels_checked=True),)),
    "memory_read": ("memory_read", ("q",), lambda t: (ops.memory_read(t["q"], t["mem"], 0.5),)),
    "spade_modulate": ("spade_modulate", ("x", "gamma", "beta"),
                       lambda t: (ops.spade_modulate(t["x"], t["gamma"], t["beta"]),)),
    "masked_patch_attention": ("patch_attention", ("x", "gamma", "beta"),
                               lambda t: (ops.masked_patch_attention(t["x"], t["gamma"], t["beta"], t["mask"], 2),)),
}


def _backends(family):
    out = []
    if mdrnet_fast.backends()["cuda"]["available"] and has_kernel(f"{family}.forward", "cuda"):
        out.append("cuda")
    if has_kernel(f"{family}.forward", "triton"):
        out.append("triton")
    return out or ["reference"]


PARAMS = [pytest.param(name, be, id=f"{name}-{be}") for name, (fam, _, _) in CASES.items() for be in
          (_backends(fam) if torch.cuda.is_available() else ["cuda"])]


@contextlib.contextmanager
def _syncs_are_errors():
    """Any host sync inside raises (the GPU work queued before it has been drained first)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _fwd_bwd(name, t):
    _, diff, f = CASES[name]
    leaves = {k: (v.detach().clone().requires_grad_(k in diff) if v.is_floating_point() else v) for k, v in t.items()}
    outs = f(leaves)
    loss = sum((o.float() * (i + 1)).square().sum() for i, o in enumerate(outs) if o.requires_grad)
    return outs, torch.autograd.grad(loss, [leaves[k] for k in diff])


@pytest.mark.parametrize("name,backend", PARAMS)
def test_no_host_sync_in_forward_and_backward(name, backend):
    t = _inputs("cuda")
    with mdrnet_fast.use_backend(backend):
        _fwd_bwd(name, t)  # warm up: Triton compiles, cuDNN picks its algorithms
        with _syncs_are_errors():
            _fwd_bwd(name, t)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_no_host_sync_in_memory_update(backend):
    if not has_kernel("memory_update.forward", backend):
        pytest.skip(f"no {backend} memory update")
    t = _inputs("cuda")
    with mdrnet_fast.use_backend(backend):
        ops.memory_update_(t["mem"], t["q"], t["v"], t["present"], 0.9)
        with _syncs_are_errors():
            ops.memory_update_(t["mem"], t["q"], t["v"], t["present"], 0.9)


def test_the_label_check_is_the_one_sync_and_labels_checked_skips_it():
    t = _inputs("cuda")
    ops.region_avg_pool(t["x"], t["labels"], N)
    with _syncs_are_errors():
        with pytest.raises(RuntimeError, match="synchroniz"):
            ops.region_avg_pool(t["x"], t["labels"], N)
        ops.region_avg_pool(t["x"], t["labels"], N, labels_checked=True)
    with pytest.raises(ValueError, match=r"seg labels must lie in \[0, num_classes=5\)"):
        ops.region_avg_pool(t["x"], t["labels"] + 1, N)


@pytest.mark.parametrize("name,backend", PARAMS)
def test_forward_and_backward_capture_into_a_cuda_graph(name, backend):
    """Capture fwd+bwd once, replay on new input values: equal to eager on those values."""
    static = _inputs("cuda")
    with mdrnet_fast.use_backend(backend):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph's docs ask
            for _ in range(2):
                _fwd_bwd(name, static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs, grads = _fwd_bwd(name, static)
        fresh = _inputs("cuda")
        for k, v in fresh.items():
            static[k].copy_(v * 1.5 if v.is_floating_point() and k != "mask" else v)
        graph.replay()
        want_outs, want_grads = _fwd_bwd(name, static)
    torch.cuda.synchronize()
    for got, want in zip(list(outs) + list(grads), list(want_outs) + list(want_grads)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_model_forward_has_no_host_sync():
    """The whole MDRNet forward (parser labels, region pooling, memory, MCM): asynchronous end to end."""
    from mdrnet_fast.models import MDRNet

    model = MDRNet(image_size=64, base_channels=8, style_channels=16, memory_slots=8).cuda().eval()
    image = torch.rand(2, 3, 64, 64, device="cuda") * 2 - 1
    mask = (torch.rand(2, 1, 64, 64, device="cuda") > 0.4).float()
    with torch.no_grad():
        model(image, mask)
        with _syncs_are_errors():
            model(image, mask)
