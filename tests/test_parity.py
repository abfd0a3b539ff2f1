"""Every op on every fast backend against the reference (SPEC tolerances): outputs and gradients, fresh
random inputs, SPEC edge cases, fp64/fp32/bf16/fp16, contiguous, channels_last and strided inputs."""
import pytest
import torch

import mdrnet_fast
from mdrnet_fast import ops
from mdrnet_fast.composite._common import out_format

from _util import LOW, assert_close, fast_backends, layouts, outputs_and_grads

CASES = []  # (family, op name, case id, builder) ; builder() -> (kwargs of fp64 tensors/values, grad names)


def case(family, op, cid, not_in=()):
    """Registers a case; `not_in` lists dtypes whose range cannot hold the case's true values."""
    def wrap(builder):
        builder.not_in = not_in
        CASES.append(pytest.param(family, op, builder, id=f"{op}-{cid}"))
        return builder
    return wrap


def rnd(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def hard_mask(*shape, p_valid=0.6):
    return (torch.rand(*shape) < p_valid).double()


def soft_mask(*shape):
    m = torch.rand(*shape, dtype=torch.float64)
    m[m < 0.25] = 0
    return m


# ---- partial conv (SPEC §1)
@case("partial_conv2d", "partial_conv2d", "3x3-pad1-bias-soft")
def _():
    return dict(x=rnd(2, 3, 9, 11), mask=soft_mask(2, 1, 9, 11), weight=rnd(4, 3, 3, 3), bias=rnd(4), padding=1), ["x", "weight", "bias"]


@case("partial_conv2d", "partial_conv2d", "5x5-s2-d2-odd-nobias")
def _():
    return dict(x=rnd(2, 3, 13, 10), mask=hard_mask(2, 1, 13, 10), weight=rnd(5, 3, 5, 5), stride=2, padding=2, dilation=2), ["x", "weight"]


@case("partial_conv2d", "partial_conv2d", "multi-channel-groups")
def _():
    return (dict(x=rnd(2, 4, 8, 7), mask=soft_mask(2, 4, 8, 7), weight=rnd(6, 2, 3, 3), bias=rnd(6), padding=1, groups=2,
                 multi_channel=True), ["x", "weight", "bias"])


@case("partial_conv2d", "partial_conv2d", "all-hole-windows")
def _():
    mask = torch.ones(2, 1, 12, 12, dtype=torch.float64)
    mask[:, :, 2:10, 3:11] = 0
    return dict(x=rnd(2, 3, 12, 12), mask=mask, weight=rnd(4, 3, 3, 3), bias=rnd(4), padding=1), ["x", "weight", "bias"]


@case("partial_conv2d", "partial_conv2d", "mask-none-1x1")
def _():
    return dict(x=rnd(2, 5, 6, 7), mask=None, weight=rnd(3, 5, 1, 1), bias=rnd(3)), ["x", "weight", "bias"]


@case("partial_conv2d", "partial_conv2d", "mask-batch-1-4x3")
def _():
    return dict(x=rnd(3, 2, 7, 9), mask=hard_mask(1, 1, 7, 9), weight=rnd(4, 2, 4, 3), bias=rnd(4), padding=(1, 2)), ["x", "weight", "bias"]


# ---- gated conv (SPEC §2)
for _act in ("elu", "leaky_relu", "relu", "none"):
    @case("gated_activation", "gated_conv2d", _act)
    def _(act=_act):
        return dict(x=rnd(2, 3, 8, 9), weight=rnd(8, 3, 3, 3), bias=rnd(8), padding=1, activation=act), ["x", "weight", "bias"]


@case("gated_activation", "gated_conv2d", "masked-s2")
def _():
    return (dict(x=rnd(2, 3, 9, 8), weight=rnd(6, 3, 3, 3), bias=rnd(6), stride=2, padding=1, mask=soft_mask(2, 1, 9, 8)),
            ["x", "weight", "bias"])


# ---- region pooling and broadcast (SPEC §3)
def labels_with_absent(b, h, w, n):
    lab = torch.randint(0, n, (b, h, w))
    lab[lab == n - 1] = 0  # the last class is absent everywhere
    return lab


@case("region_pool", "region_avg_pool", "labels-absent")
def _():
    return dict(feat=rnd(2, 5, 9, 7), seg=labels_with_absent(2, 9, 7, 6), num_classes=6), ["feat"]


@case("region_pool", "region_avg_pool", "soft-seg")
def _():
    seg = torch.rand(2, 4, 6, 8, dtype=torch.float64)
    seg[:, 2] = 0
    return dict(feat=rnd(2, 3, 6, 8), seg=seg), ["feat"]


@case("region_pool", "region_avg_pool", "labels-resized")
def _():
    return dict(feat=rnd(2, 4, 5, 6), seg=torch.randint(0, 5, (2, 10, 12)), num_classes=5), ["feat"]


@case("region_broadcast", "region_broadcast", "labels")
def _():
    return dict(codes=rnd(2, 6, 5), seg=labels_with_absent(2, 7, 9, 6), num_classes=6), ["codes"]


@case("region_broadcast", "region_broadcast", "soft-seg")
def _():
    return dict(codes=rnd(2, 4, 3), seg=torch.rand(2, 4, 5, 6, dtype=torch.float64)), ["codes"]


# ---- memory read (SPEC §4)
@case("memory_read", "memory_read", "tau1")
def _():
    return dict(q=rnd(3, 4, 8), mem=rnd(4, 16, 8)), ["q"]


# at a zero query the true gradient is ~1/eps = 1e8: beyond fp16's range, for the reference too
@case("memory_read", "memory_read", "tau0.3-zero-query", not_in=(torch.float16,))
def _():
    q = rnd(2, 3, 5)
    q[0, 1] = 0
    return dict(q=q, mem=rnd(3, 7, 5), tau=0.3), ["q"]


# ---- masked patch attention (SPEC §5)
@case("patch_attention", "masked_patch_attention", "8x8-p2")
def _():
    return dict(theta=rnd(2, 3, 8, 8), phi=rnd(2, 3, 8, 8), g=rnd(2, 4, 8, 8), mask=hard_mask(2, 1, 8, 8), patch_size=2), ["theta", "phi", "g"]


@case("patch_attention", "masked_patch_attention", "7x9-p2-padded-soft")
def _():
    return (dict(theta=rnd(1, 2, 7, 9), phi=rnd(1, 2, 7, 9), g=rnd(1, 3, 7, 9), mask=soft_mask(1, 1, 7, 9), patch_size=2),
            ["theta", "phi", "g"])


@case("patch_attention", "masked_patch_attention", "10x6-p3-scale-no-holes-in-half")
def _():
    mask = hard_mask(2, 1, 10, 6)
    mask[0] = 1  # sample 0 has no hole: its output and gradients are zero
    return (dict(theta=rnd(2, 2, 10, 6), phi=rnd(2, 2, 10, 6), g=rnd(2, 2, 10, 6), mask=mask, patch_size=3, scale=0.7),
            ["theta", "phi", "g"])


# ---- SPADE (SPEC §6)
@case("spade_modulate", "spade_modulate", "plain")
def _():
    return dict(x=rnd(2, 3, 7, 6), gamma=rnd(2, 3, 7, 6), beta=rnd(2, 3, 7, 6)), ["x", "gamma", "beta"]


@case("spade_modulate", "spade_modulate", "constant-channel")
def _():
    x = rnd(2, 3, 5, 5)
    x[:, 1] = 0.5  # zero variance: eps keeps it finite
    return dict(x=x, gamma=rnd(2, 3, 5, 5), beta=rnd(2, 3, 5, 5), eps=1e-3), ["x", "gamma", "beta"]


def _prepare(kwargs, grad_names, dtype, layout):
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = layouts(v.to(dtype), layout)
            if k in grad_names:
                v = v.detach().requires_grad_(True)
        out[k] = v
    return out


def _to_reference_dtype(kwargs, dtype, grad_names):
    """Low-precision inputs are compared with the fp32 reference on the same (rounded) values."""
    if dtype not in LOW:
        return {k: (v.detach().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.detach().float().requires_grad_(k in grad_names)
        out[k] = v
    return out


def _check(family, op, builder, backend, dtype, layout):
    torch.manual_seed(7)
    kwargs, grad_names = builder()
    fast_in = _prepare(kwargs, grad_names, dtype, layout)
    ref_in = _to_reference_dtype(fast_in, dtype, grad_names)
    fn = getattr(ops, op)
    with mdrnet_fast.use_backend(backend):
        outs, grads = outputs_and_grads(fn, fast_in, grad_names)
    with mdrnet_fast.use_backend("reference"):
        ref_outs, ref_grads = outputs_and_grads(fn, ref_in, grad_names)
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert o.dtype == dtype, f"output {i} has dtype {o.dtype}, inputs were {dtype}"
        assert_close(o, r, dtype, f"output {i}")
    for name, gr, r in zip(grad_names, grads, ref_grads):
        assert_close(gr, r, dtype, f"grad {name}")
        if name == "weight":  # a channels_last parameter's gradient accumulates without a layout copy
            fmt = out_format(fast_in[name])
            assert gr.is_contiguous(memory_format=fmt), f"grad weight: strides {gr.stride()}, not {fmt}"




@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp64", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize("family,op,builder", CASES)
def test_parity(family, op, builder, dtype):
    if dtype in builder.not_in:
        return
    for backend in fast_backends(family):
        _check(family, op, builder, backend, dtype, "contiguous")


@pytest.mark.parametrize("layout", ["channels_last", "noncontig"])
@pytest.mark.parametrize("family,op,builder", CASES)
def test_parity_layouts(family, op, builder, layout):
    for backend in fast_backends(family):
        _check(family, op, builder, backend, torch.float32, layout)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_memory_update_parity(dtype):
    n, m, c, b = 5, 32, 16, 12
    mem = torch.randn(n, m, c, dtype=dtype)
    mem[:, 7] = mem[:, 3]  # exact ties: the lowest slot must win everywhere
    q = torch.randn(b, n, c, dtype=dtype)
    q[:4] = mem[:, 3][None] * torch.rand(4, n, 1, dtype=dtype).add(0.5)
    v = torch.randn(b, n, c, dtype=dtype)
    present = torch.rand(b, n) > 0.25
    ref_mem = mem.clone()
    with mdrnet_fast.use_backend("reference"):
        ref_slots = ops.memory_update_(ref_mem, q, v, present, 0.8)
    for backend in fast_backends("memory_update"):
        fast_mem = mem.clone()
        with mdrnet_fast.use_backend(backend):
            slots = ops.memory_update_(fast_mem, q, v, present, 0.8)
        assert torch.equal(slots, ref_slots)
        assert (slots[:4][present[:4]] == 3).all()
        assert_close(fast_mem, ref_mem, dtype, "mem")
