"""Benchmarks of every mdrnet_fast op, each implementation side by side in one pytest-benchmark group.

Implementations: `reference` (plain PyTorch through mdrnet_fast.ops), each fast backend that runs on the
device (even without a kernel for the op: the composite path is what a user gets), `compile`
(torch.compile of the reference function) and, for the conv ops, `conv2d` (a plain F.conv2d of the
same shape, the floor a fused conv could approach). Modes: `fwd`, and `fwdbwd` = forward plus the
gradient of the sum of the outputs w.r.t. the float inputs. See bench/README.md.
"""
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mdrnet_fast
from mdrnet_fast import ops, reference
from mdrnet_fast import _dispatch
from mdrnet_fast._dispatch import has_kernel
from mdrnet_fast.data import FreeFormMasks

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _nvidia_partialconv  # noqa: E402  (NVIDIA's PartialConv2d, when the user points to it)

NVIDIA = _nvidia_partialconv.load()

QUICK = os.environ.get("MDRNET_FAST_BENCH_QUICK", "0") == "1"
DTYPE = torch.float32
N_CLASSES, MEM_SLOTS = 14, 128
# seconds of timed calls per benchmark, and the bounds on the round count it gives
BUDGET_S, MIN_ROUNDS, MAX_ROUNDS = (0.15, 3, 30) if QUICK else (1.5, 5, 200)
# fast backends that can run on each device type (triton under TRITON_INTERPRET on CPU is left out: far too slow)
BACKENDS_FOR = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}


@dataclass
class Case:
    op: str                          # name in mdrnet_fast.ops and mdrnet_fast.reference
    tag: str                         # shape tag of the benchmark group
    make: Callable                   # (device) -> list of positional args, fresh random
    grads: Tuple[int, ...]           # indices of the args differentiated in fwdbwd ( () = forward only)
    families: Tuple[str, ...]        # kernel families the fast path uses
    conv: Optional[Callable] = None  # the plain F.conv2d of the same shape, on the same args
    baselines: Dict[str, Callable] = field(default_factory=dict)  # other formulations, by impl name


def _randn(*shape, device):
    return torch.randn(*shape, device=device, dtype=DTYPE)


def _mask(b, hw, device, holes=0.3):
    return (torch.rand(b, 1, hw, hw, device=device) > holes).to(DTYPE)


def nvidia_partial_conv(cls):
    """NVIDIA's own PartialConv2d module run on the case's args: built once per weight, with the case's weight
    and bias tensors as its parameters (so fwdbwd differentiates them as for every other row)."""
    modules = {}

    def run(x, mask, w, bias, stride, padding, dilation, groups, multi_channel):
        key = (id(w), id(bias))
        if key not in modules:
            m = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                    dilation=dilation, groups=groups, bias=bias is not None, multi_channel=multi_channel,
                    return_mask=True).to(x.device)
            del m.weight, m.bias
            m.weight, m.bias = w, bias
            modules[key] = m
        return modules[key](x, mask)

    return run


def partial_conv(b, cin, cout, hw, k, multi_channel=False):
    """multi_channel: a mask per input channel, as the coarse U-Net's decoder layers have (skip features and
    their masks concatenated): the reference then convolves a C_in-channel mask with a ones kernel."""
    def make(device):
        w = _randn(cout, cin, k, k, device=device) / (cin * k * k) ** 0.5
        mask = _mask(b, hw, device).expand(-1, cin, -1, -1).contiguous() if multi_channel else _mask(b, hw, device)
        return [_randn(b, cin, hw, hw, device=device), mask, w, _randn(cout, device=device),
                1, k // 2, 1, 1, multi_channel]

    # NVIDIA's module, when MDRNET_FAST_NVIDIA_PARTIALCONV points to its file (tests/_nvidia_partialconv.py)
    baselines = {"nvidia": nvidia_partial_conv(NVIDIA)} if NVIDIA is not None else {}
    return Case("partial_conv2d", f"B{b}-C{cin}to{cout}-{hw}x{hw}-k{k}" + ("-multichannel" if multi_channel else ""),
                make, (0, 2, 3), ("partial_conv2d",),
                conv=lambda x, m, w, bias, s, p, d, g, mc: F.conv2d(x, w, bias, s, p, d, g), baselines=baselines)


def gated_conv(b, cin, cout, hw, k, masked=False):
    def make(device):
        w = _randn(2 * cout, cin, k, k, device=device) / (cin * k * k) ** 0.5
        mask = _mask(b, hw, device) if masked else None
        return [_randn(b, cin, hw, hw, device=device), w, _randn(2 * cout, device=device), 1, k // 2, 1, 1,
                "elu", 0.2, mask]

    families = ("gated_activation", "partial_conv2d") if masked else ("gated_activation",)
    return Case("gated_conv2d", f"B{b}-C{cin}to{cout}-{hw}x{hw}-k{k}" + ("-masked" if masked else ""), make,
                (0, 1, 2), families, conv=lambda x, w, bias, s, p, d, g, *_: F.conv2d(x, w, bias, s, p, d, g))


def _labels(b, hw, device):
    return torch.randint(0, N_CLASSES, (b, hw, hw), device=device)


def sean_loop_pool(feat, labels, num_classes):
    """Region pooling the way SEAN's encoder does it: per sample and class, masked_select the region's
    pixels and take their mean (the baseline of issue 4's >= 20x target; the reference is the one-hot einsum)."""
    b, c = feat.shape[:2]
    codes = feat.new_zeros(b, num_classes, c)
    for i in range(b):
        for k in range(num_classes):
            region = labels[i] == k
            area = int(region.sum())
            if area > 0:
                codes[i, k] = feat[i].masked_select(region.unsqueeze(0)).reshape(c, area).mean(1)
    return codes


def region_pool(b, c, hw):
    return Case("region_avg_pool", f"B{b}-C{c}-{hw}x{hw}-n{N_CLASSES}",
                lambda dev: [_randn(b, c, hw, hw, device=dev), _labels(b, hw, dev), N_CLASSES], (0,),
                ("region_pool", "region_broadcast"), baselines={"sean-loop": sean_loop_pool})


def region_broadcast(b, c, hw):
    return Case("region_broadcast", f"B{b}-C{c}-{hw}x{hw}-n{N_CLASSES}",
                lambda dev: [_randn(b, N_CLASSES, c, device=dev), _labels(b, hw, dev), N_CLASSES], (0,),
                ("region_broadcast", "region_pool"))


def memory_read(b, c):
    return Case("memory_read", f"B{b}-n{N_CLASSES}-m{MEM_SLOTS}-C{c}",
                lambda dev: [_randn(b, N_CLASSES, c, device=dev), _randn(N_CLASSES, MEM_SLOTS, c, device=dev), 0.5],
                (0,), ("memory_read",))


def memory_update(b, c):
    # forward only; the memory drifts in place from round to round, which keeps it bounded (an EMA)
    return Case("memory_update_", f"B{b}-n{N_CLASSES}-m{MEM_SLOTS}-C{c}",
                lambda dev: [_randn(N_CLASSES, MEM_SLOTS, c, device=dev), _randn(b, N_CLASSES, c, device=dev),
                             _randn(b, N_CLASSES, c, device=dev),
                             torch.rand(b, N_CLASSES, device=dev) > 0.3, 0.9],
                (), ("memory_update",))


def _stroke_mask(b, hw, device, ratio=(0.2, 0.3)):
    """Free-form stroke masks (the training masks, about 25 % holes): holes are contiguous regions, as MCM
    sees them, so whole patches are hole-free and skipped. Random single-pixel holes are the worst case."""
    masks = FreeFormMasks(hw, ratio=ratio)
    return torch.stack([masks.sample(np.random.default_rng([1, i])) for i in range(b)]).to(device, DTYPE)


def patch_attention(b, c, hw, p, holes="pixels"):
    def make(dev):
        mask = _stroke_mask(b, hw, dev) if holes == "strokes" else _mask(b, hw, dev, 0.25)
        return [_randn(b, c, hw, hw, device=dev), _randn(b, c, hw, hw, device=dev),
                _randn(b, c, hw, hw, device=dev), mask, p]

    return Case("masked_patch_attention", f"B{b}-C{c}-{hw}x{hw}-p{p}-{holes}25", make, (0, 1, 2),
                ("patch_attention",))


def spade(b, c, hw):
    return Case("spade_modulate", f"B{b}-C{c}-{hw}x{hw}",
                lambda dev: [_randn(b, c, hw, hw, device=dev), _randn(b, c, hw, hw, device=dev),
                             _randn(b, c, hw, hw, device=dev), 1e-5],
                (0, 1, 2), ("spade_modulate",))


if QUICK:
    CASES = [partial_conv(1, 16, 16, 32, 3), gated_conv(1, 16, 16, 32, 3), region_pool(2, 32, 32),
             region_broadcast(2, 32, 32), memory_read(2, 64), memory_update(2, 64),
             patch_attention(1, 16, 16, 2), spade(2, 32, 32)]
else:
    CASES = [partial_conv(4, 64, 64, 64, 3), partial_conv(4, 96, 32, 64, 3, multi_channel=True),
             gated_conv(4, 64, 64, 64, 3), gated_conv(4, 64, 64, 64, 3, masked=True),
             region_pool(4, 128, 64), region_broadcast(4, 128, 64), memory_read(8, 256), memory_update(8, 256),
             patch_attention(2, 64, 32, 2), patch_attention(2, 64, 64, 2), patch_attention(2, 64, 64, 2, "strokes"),
             spade(4, 128, 64)]


# GPU-sized cases, run on CUDA only (besides the cases above): at the sizes above an H100 finishes each kernel
# in microseconds, and every implementation's time is launch and autograd overhead
# (bench/results/nvidia-h100-80gb-hbm3-20261124-session.md).
GPU_CASES = [] if QUICK else [
    partial_conv(8, 128, 128, 128, 3), gated_conv(8, 128, 128, 128, 3, masked=True), region_pool(8, 256, 128),
    region_broadcast(8, 256, 128), memory_read(64, 512), memory_update(64, 512),
    patch_attention(4, 64, 64, 2, "strokes"), patch_attention(2, 64, 128, 2, "strokes"), spade(8, 256, 128)]


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _cases(device):
    return CASES + (GPU_CASES if device == "cuda" else [])


def _impls(case, device):
    fast = [b for b in BACKENDS_FOR[device] if mdrnet_fast.backends()[b]["available"]]
    return ["reference", *fast, "compile"] + (["conv2d"] if case.conv else []) + list(case.baselines)


def pytest_generate_tests(metafunc):
    params, ids = [], []
    for device in _devices():
        for case in _cases(device):
            for mode in ("fwd", "fwdbwd") if case.grads else ("fwd",):
                for impl in _impls(case, device):
                    params.append((case, mode, device, impl))
                    ids.append(f"{case.op}-{mode}-{case.tag}-{device}-{impl}")
    metafunc.parametrize("case,mode,device,impl", params, ids=ids)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _implementation(case, impl):
    if impl == "conv2d":
        return case.conv
    if impl in case.baselines:
        return case.baselines[impl]
    if impl == "compile":
        torch._dynamo.reset()  # a fresh compile per benchmark: no recompile limits or shape guards carried over
        return torch.compile(getattr(reference, case.op))
    op = getattr(ops, case.op)

    def run(*args):
        with mdrnet_fast.use_backend(impl):
            return op(*args)

    return run


def _kernel_info(case, impl, mode):
    """(real_kernel, missing kernels) for a fast backend; (None, []) for the others."""
    if impl not in mdrnet_fast._dispatch.FAST_BACKENDS:
        return None, []
    passes = ("forward", "backward") if mode == "fwdbwd" else ("forward",)
    # a family with no composite backward (region pool/broadcast: each op's backward is the other op)
    # has no backward kernel to look for
    missing = [f"{fam}.{p}" for fam in case.families for p in passes
               if (f"{fam}.{p}", "composite") in _dispatch._KERNELS and not has_kernel(f"{fam}.{p}", impl)]
    return not missing, missing


def make_step(case, mode, device, impl):
    """(step, args): one timed call of `impl` on the case's inputs (seed 0), its gradient in fwdbwd mode."""
    torch.manual_seed(0)
    args = case.make(device)
    leaves = [args[i].requires_grad_() for i in case.grads] if mode == "fwdbwd" else []
    fn = _implementation(case, impl)

    def step():
        out = fn(*args)
        if leaves:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            torch.autograd.grad(sum(o.sum() for o in outs if o.requires_grad), leaves)
        _sync(device)

    return step, args


def test_op(benchmark, case, mode, device, impl):
    step, args = make_step(case, mode, device, impl)
    try:
        step()  # torch.compile compiles here (and its backward on this first backward)
    except Exception as exc:
        if impl == "compile":
            pytest.skip(f"torch.compile failed: {type(exc).__name__}: {exc}")
        raise
    step()
    t0 = time.perf_counter()
    step()
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_S / max(time.perf_counter() - t0, 1e-6))))

    real_kernel, missing = _kernel_info(case, impl, mode)
    benchmark.group = f"{case.op}/{mode}/{case.tag}@{device}"
    benchmark.extra_info.update(
        impl=impl, op=case.op, mode=mode, shape=case.tag, device=device, dtype=str(DTYPE).replace("torch.", ""),
        threads=torch.get_num_threads(), real_kernel=real_kernel, missing_kernels=missing,
        shapes=[list(a.shape) if isinstance(a, torch.Tensor) else a for a in args], quick=QUICK)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=0)
