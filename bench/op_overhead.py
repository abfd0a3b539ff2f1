"""Host overhead per op call: forward + backward of each public op on tiny tensors, where the kernels cost next
to nothing and what is timed is Python, dispatch and autograd. Prints microseconds per call for the reference
and a fast backend, best of a few repeats (1 thread).

    python bench/op_overhead.py [--backend cpu] [--device cpu] [--calls 400]

On a GPU the forward + backward rows of the op benchmarks at small sizes are this overhead (README,
"Measured (GPU)"); ops/_register.call's eager path exists to cut it.
"""
import argparse
import time

import torch

import mdrnet_fast
from mdrnet_fast import ops


def cases(device):
    def t(*shape, grad=True):
        return torch.randn(*shape, device=device, requires_grad=grad)

    x, w, b = t(1, 4, 4, 4), t(8, 4, 3, 3), t(8)
    m = torch.ones(1, 1, 4, 4, device=device)
    g, be = t(1, 4, 4, 4), t(1, 4, 4, 4)
    lab = torch.randint(0, 3, (1, 4, 4), device=device)
    q, mem = t(1, 3, 4), torch.randn(3, 5, 4, device=device)
    th = t(1, 2, 4, 4)
    grad = torch.autograd.grad
    return {
        "gated_conv2d": lambda: grad(ops.gated_conv2d(x, w, b, 1, 1).sum(), (x, w, b)),
        "gated_conv2d masked": lambda: grad(ops.gated_conv2d(x, w, b, 1, 1, mask=m)[0].sum(), (x, w, b)),
        "partial_conv2d": lambda: grad(ops.partial_conv2d(x, m, w[:4], b[:4], 1, 1)[0].sum(), (x, w, b)),
        "spade_modulate": lambda: grad(ops.spade_modulate(x, g, be).sum(), (x, g, be)),
        "region_avg_pool": lambda: grad(ops.region_avg_pool(x, lab, 3).sum(), (x,)),
        "memory_read": lambda: grad(ops.memory_read(q, mem, 0.5).sum(), (q,)),
        "masked_patch_attention": lambda: grad(ops.masked_patch_attention(th, th, th, 1 - m, 2).sum(), (th,)),
    }


def time_us(fn, calls, repeats=3, device="cpu"):
    for _ in range(30):
        fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="cpu")
    p.add_argument("--device", default="cpu")
    p.add_argument("--calls", type=int, default=400)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(f"{'op (fwd+bwd, tiny)':24s} {'reference us':>13s} {a.backend + ' us':>10s} {'difference':>11s}")
    for name, fn in cases(a.device).items():
        times = {}
        for backend in ("reference", a.backend):
            with mdrnet_fast.use_backend(backend):
                times[backend] = time_us(fn, a.calls, device=a.device)
        print(f"{name:24s} {times['reference']:13.1f} {times[a.backend]:10.1f} "
              f"{times[a.backend] - times['reference']:+11.1f}")


if __name__ == "__main__":
    main()
