"""Speed-up ratios that hold on a noisy machine: every implementation of an op case timed in the same rounds.

pytest-benchmark (bench/test_bench_ops.py) times one implementation after another, all rounds of each. On a
shared VM the machine's speed drifts by tens of percent over a run, so two implementations timed a minute
apart can swap places (the committed CPU tables show it: the same case at 0.72x and at 1.19x in two runs).
Here each round runs every implementation once, in an order rotated from round to round, and the ratio
baseline / impl (the baseline is the first implementation listed, the reference by default) is taken within
the round, where the drift is shared; the table gives the median ratio over the rounds and its quartiles.
Same cases, inputs, implementations and steps as bench/test_bench_ops.py.

    python bench/paired_ratios.py                          # every CPU case, fwd and fwdbwd
    python bench/paired_ratios.py -k partial_conv2d --rounds 30 --json out.json
    python bench/paired_ratios.py --device cuda --impls reference cuda triton compile
    python bench/paired_ratios.py --model cpu-demo:128:2 --modes train --impls reference+cl cpu+cl

--model preset:size:batch times whole-model steps instead (bench/test_bench_model.py's train and infer steps,
implementations as there: reference, cpu, cuda, triton, auto, compile, each +cl for channels_last).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_model as tbm  # noqa: E402  (the model benchmark's steps)
import test_bench_ops as tb  # noqa: E402  (the op benchmark's cases and implementations)

import mdrnet_fast  # noqa: E402


def warm_step(case, mode, device, impl):
    """The op benchmark's step for one implementation, run twice (torch.compile compiles on the first)."""
    step, _ = tb.make_step(case, mode, device, impl)
    step()
    step()
    return step


def quartiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[1], q[2]


def warm_model_step(config, mode, device, impl):
    """The model benchmark's step for one implementation, under its backend, run twice."""
    step, backend = tbm._make_step(config, mode, device, impl)

    def run():
        with mdrnet_fast.use_backend(backend):
            step()

    run()
    run()
    return run


def measure(make, impls, rounds):
    """{impl: (median ms, [ratio impls[0] / impl per round])}; make(impl) -> a warmed-up step."""
    steps = {}
    for impl in impls:
        try:
            steps[impl] = make(impl)
        except Exception as exc:  # a compile failure leaves that implementation out, as the benchmark does
            print(f"  {impl}: left out ({type(exc).__name__}: {str(exc)[:80]})")
    if impls[0] not in steps:
        raise SystemExit(f"the baseline {impls[0]} could not run: no ratio to take")
    names = list(steps)
    times = {impl: [] for impl in names}
    for r in range(rounds):
        for i in range(len(names)):
            impl = names[(i + r) % len(names)]
            t0 = time.perf_counter()
            steps[impl]()
            times[impl].append(time.perf_counter() - t0)
    base = times[names[0]]
    return {impl: (statistics.median(ts) * 1e3, [b / t for b, t in zip(base, ts)]) for impl, ts in times.items()}


def report(group, results, rounds, rows):
    print(f"\n{group}")
    for impl, (ms, ratios) in results.items():
        q1, med, q3 = quartiles(ratios)
        print(f"  {impl:13s} {ms:9.3f} ms   {med:5.2f}x  [{q1:.2f}, {q3:.2f}]", flush=True)
        rows.append(dict(group=group, impl=impl, median_ms=ms, ratio=med, ratio_q1=q1, ratio_q3=q3,
                         rounds=rounds, threads=torch.get_num_threads()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("-k", dest="match", default="", help="only cases whose op or shape tag contains this")
    p.add_argument("--modes", nargs="+", default=None, choices=["fwd", "fwdbwd", "train", "infer"],
                   help="fwd and fwdbwd for ops (default both), train and infer with --model (default both)")
    p.add_argument("--impls", nargs="+", default=None,
                   help="implementations, the baseline first (default: the benchmark's list, the reference first)")
    p.add_argument("--model", metavar="PRESET:SIZE:BATCH", help="time whole-model steps of this config")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--json", metavar="FILE", help="also write the rows here")
    args = p.parse_args(argv)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds; ratio = "
          "baseline time / impl time in the same round: median [quartiles]")
    if args.model:
        (config,) = tbm._parse_configs(args.model)
        for mode in args.modes or ["train", "infer"]:
            impls = args.impls or [i for i in tbm._impls(args.device) if not (mode == "train" and "+graph" in i)]
            results = measure(lambda impl: warm_model_step(config, mode, args.device, impl), impls, args.rounds)
            report(f"model/{mode}/{config.tag}@{args.device}", results, args.rounds, rows)
    else:
        for case in tb._cases(args.device):
            if args.match not in f"{case.op}/{case.tag}":
                continue
            for mode in args.modes or ["fwd", "fwdbwd"]:
                if mode not in ("fwd", "fwdbwd") or (mode == "fwdbwd" and not case.grads):
                    continue
                impls = args.impls or tb._impls(case, args.device)
                results = measure(lambda impl: warm_step(case, mode, args.device, impl), impls, args.rounds)
                report(f"{case.op}/{mode}/{case.tag}@{args.device}", results, args.rounds, rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
