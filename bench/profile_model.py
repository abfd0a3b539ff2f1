"""Where a whole-model step spends its time: torch.profiler tables of the benchmark's train or infer step
(bench/test_bench_model.py's own step, same model, inputs and optimizers), per backend, side by side.

    python bench/profile_model.py --device cuda --impls reference auto --mode infer --config paper:256:8
    python bench/profile_model.py --device cpu --impls reference+cl cpu+cl --mode train --config cpu-demo:64:4

Prints, per implementation, the median step time (wall clock, synchronised), then the top ops by self device
time (CUDA) or self CPU time, and on CUDA how busy the GPU was (kernel time / wall time: near 1 means the
GPU is the limit, well below 1 means the host is). --trace DIR writes a Chrome trace per implementation.
--by-caller OP (e.g. aten::copy_) adds where that op's time comes from: its CPU time per step grouped by the
chain of ops that called it, with its first input's shape.
"""
import argparse
import collections
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_model as tb  # noqa: E402  (the benchmark's step, so both measure the same thing)

import mdrnet_fast  # noqa: E402


def _parse(spec):
    (config,) = tb._parse_configs(spec)
    return config


def by_caller(prof, op, steps, rows, depth=3):
    """CPU time per step of `op`, grouped by its callers (innermost first) and its first input's shape."""
    total, calls = collections.Counter(), collections.Counter()
    for e in prof.events():
        if e.name != op:
            continue
        chain, parent = [], e.cpu_parent
        while parent is not None and len(chain) < depth:
            chain.append(parent.name)
            parent = parent.cpu_parent
        shape = list(e.input_shapes[0]) if e.input_shapes else []
        key = (" < ".join(chain) or "(top level)") + f"  {shape}"
        total[key] += e.cpu_time_total / steps
        calls[key] += 1
    print(f"\n{op}: {sum(total.values()) / 1e3:.2f} ms per step, by caller")
    for key, us in total.most_common(rows):
        print(f"{us / 1e3:9.2f} ms {calls[key] // steps:5d}x  {key}")


def profile(impl, config, mode, device, warmup, steps, rows, trace_dir, caller_of=None):
    step, backend = tb._make_step(config, mode, device, impl)
    with mdrnet_fast.use_backend(backend):
        for _ in range(warmup):
            step()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()  # synchronises on CUDA
            times.append(time.perf_counter() - t0)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities, record_shapes=bool(caller_of)) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            wall = (time.perf_counter() - t0) / steps
    median = statistics.median(times)
    print(f"\n=== {impl} ({backend} backend), {mode}, {config.tag} on {device}: median {median * 1e3:.2f} ms "
          f"over {steps} steps")
    averages = prof.key_averages()
    if device == "cuda":
        # self device time of kernels only (no double counting of the ops that launched them)
        busy = sum(e.self_device_time_total for e in averages) / steps / 1e3
        print(f"GPU busy {busy:.2f} ms per step of {wall * 1e3:.2f} ms wall under the profiler "
              f"({busy / (wall * 1e3):.0%}); the rest is the host")
        print(averages.table(sort_by="self_device_time_total", row_limit=rows))
    else:
        print(averages.table(sort_by="self_cpu_time_total", row_limit=rows))
    if caller_of:
        by_caller(prof, caller_of, steps, rows)
    if trace_dir:
        os.makedirs(trace_dir, exist_ok=True)
        prof.export_chrome_trace(os.path.join(trace_dir, f"{mode}-{config.tag}-{device}-{impl}.json"))
    return median


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--impls", nargs="+", default=None,
                   help="as in the model benchmark: reference, auto, cpu, cuda, triton, compile, each +cl for "
                        "channels_last (default: reference and auto on CUDA, reference+cl and cpu+cl on CPU)")
    p.add_argument("--mode", choices=["train", "infer"], default="infer")
    p.add_argument("--config", default=None, help="preset:size:batch (default: paper:256:8 on CUDA, "
                                                  "cpu-demo:64:4 on CPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--trace", metavar="DIR", help="write a Chrome trace per implementation here")
    p.add_argument("--by-caller", metavar="OP", help="also group this op's CPU time by its callers (aten::copy_)")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    impls = args.impls or (["reference", "auto"] if cuda else ["reference+cl", "cpu+cl"])
    config = _parse(args.config or ("paper:256:8" if cuda else "cpu-demo:64:4"))
    medians = {impl: profile(impl, config, args.mode, args.device, args.warmup, args.steps, args.rows, args.trace,
                             args.by_caller)
               for impl in impls}
    base = medians[impls[0]]
    print("\nmedian step, speed-up over " + impls[0] + ": "
          + ", ".join(f"{k} {v * 1e3:.2f} ms ({base / v:.2f}x)" for k, v in medians.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
