"""oneDNN's convolution in NCHW against channels_last, at the shapes of the op benchmark and the model's layers:
what torch.compile's CPU code does for the partial conv (x*mask written straight into a channels_last buffer,
the weight converted to channels_last, the convolution run there), and what a model kept in channels_last
gets without converting per layer. Median ms per call, plain F.conv2d forward, no grad.

    python bench/conv_layouts.py [--threads 2] [--calls 11] [--shapes 4,64,64,64,3 ...]

Columns: nchw (input and weight NCHW), cl-x (input channels_last), cl-xw (input and weight channels_last),
then the conversions a layout switch per layer would add: x*mask written into a channels_last buffer by
TensorIterator (against the same product in NCHW), and the output back to NCHW.
"""
import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

CL = torch.channels_last
# (batch, C_in, C_out, size, kernel): the op benchmark's conv shapes, the coarse U-Net's first layer at 256²,
# its deep layers, and the decoder's multi-channel kind
SHAPES = [(4, 64, 64, 64, 3), (1, 3, 64, 256, 7), (4, 512, 512, 16, 3), (4, 96, 32, 64, 3),
          (2, 128, 128, 128, 3), (8, 256, 256, 32, 3)]


def median_ms(fn, calls):
    for _ in range(2):
        fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--calls", type=int, default=11)
    p.add_argument("--shapes", nargs="+", metavar="B,CIN,COUT,SIZE,K", help="instead of the built-in shapes")
    args = p.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms of {args.calls} calls")
    print(f"{'shape':28s} {'nchw':>7s} {'cl-x':>7s} {'cl-xw':>7s} {'x*m':>7s} {'x*m->cl':>8s} {'out->nchw':>9s}")
    for b, cin, cout, hw, k in shapes:
        x = torch.randn(b, cin, hw, hw)
        mask = (torch.rand(b, 1, hw, hw) > 0.3).float()
        w = torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5
        x_cl, w_cl = x.contiguous(memory_format=CL), w.contiguous(memory_format=CL)

        def product_cl():
            out = torch.empty_like(x, memory_format=CL)
            return torch.mul(x, mask, out=out)

        out_cl = F.conv2d(x_cl, w_cl, None, 1, k // 2)
        with torch.no_grad():
            cells = [median_ms(lambda: F.conv2d(x, w, None, 1, k // 2), args.calls),
                     median_ms(lambda: F.conv2d(x_cl, w, None, 1, k // 2), args.calls),
                     median_ms(lambda: F.conv2d(x_cl, w_cl, None, 1, k // 2), args.calls),
                     median_ms(lambda: x * mask, args.calls),
                     median_ms(product_cl, args.calls),
                     median_ms(lambda: out_cl.contiguous(), args.calls)]
        tag = f"B{b} {cin}->{cout} {hw}x{hw} k{k}"
        print(f"{tag:28s} " + " ".join(f"{c:{w}.2f}" for c, w in zip(cells, (7, 7, 7, 7, 8, 9))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
