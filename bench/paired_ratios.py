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
    python bench/paired_ratios.py --device cuda --model paper:256:8 --modes infer --dtype bf16 \\
        --impls reference auto auto+graph compile auto+compile --budget-s 100 --json infer.json

--model preset:size:batch times whole-model steps instead (bench/test_bench_model.py's train and infer steps,
implementations as there: reference, cpu, cuda, triton, auto, compile, variants +cl (channels_last), +compile
(torch.compile of the model under that backend) and +graph (CUDA graph replay; CUDA only, left out on the
CPU in one line)). --dtype bf16 runs the model steps under bf16 autocast (op cases: bf16 inputs).

--budget-s S: the run ends itself within S seconds. An implementation's warm-up (where torch.compile compiles)
is cut when it would leave too little time for the rounds, and that implementation is left out; the rounds stop
at the budget (at least one round). SIGTERM (`timeout`) stops the same way. --json is rewritten after every
group, so a run cut short keeps every group it finished.
"""
import argparse
import json
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_bench_model as tbm  # noqa: E402  (the model benchmark's steps)
import test_bench_ops as tb  # noqa: E402  (the op benchmark's cases and implementations)

import mdrnet_fast  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MIN_ROUNDS = 3  # the rounds a warm-up must leave time for under --budget-s


class OutOfTime(BaseException):
    """The budget (or a SIGTERM) ran out. A BaseException: torch.compile wraps an Exception raised inside it
    into its own error types and may carry on; this one it lets through."""


_STATE = {"deadline": None, "terminated": False}


def _on_signal(signum, frame):
    if signum == signal.SIGTERM:  # `timeout` kills 5 s later (-k 5): 2 s to time what is warm and save it
        _STATE["terminated"] = True
        _STATE["deadline"] = min(_STATE["deadline"] or float("inf"), time.perf_counter() + 2.0)
    raise OutOfTime(signal.Signals(signum).name)


def _left():
    return float("inf") if _STATE["deadline"] is None else _STATE["deadline"] - time.perf_counter()


class _alarm:
    """Raise OutOfTime in this (main) thread after `seconds` (no alarm for inf)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __enter__(self):
        if self.seconds != float("inf"):
            signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 0.01))

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_REAL, 0)


def _timed_second_call(run):
    """Run twice (torch.compile compiles on the first); the second call's seconds."""
    run()
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def warm_step(case, mode, device, impl):
    """The op benchmark's step for one implementation, warmed up: (step, seconds of one step)."""
    step, _ = tb.make_step(case, mode, device, impl)
    return step, _timed_second_call(step)


def quartiles(xs):
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[1], q[2]


def warm_model_step(config, mode, device, impl, amp=None):
    """The model benchmark's step for one implementation, under its backend, warmed up: (run, seconds)."""
    step, backend = tbm._make_step(config, mode, device, impl, amp)

    def run():
        with mdrnet_fast.use_backend(backend):
            step()

    return run, _timed_second_call(run)


def measure(make, impls, rounds):
    """({impl: (median ms, [ratio impls[0] / impl per round], warm-up s)}, rounds done); make(impl) -> (warmed-up
    step, seconds of one step). Under a budget, warm-ups that would leave no time for MIN_ROUNDS rounds are cut
    (that impl is left out) and the rounds stop at the deadline, after at least one."""
    steps, step_s, warm_s = {}, {}, {}
    for impl in impls:
        known = list(step_s.values())
        reserve = 2 * MIN_ROUNDS * (sum(known) + max(known, default=0.0)) + 2.0  # rounds of these and of impl
        budget = _left() - reserve
        if budget <= 1:
            print(f"  {impl}: left out (out of time: {max(_left(), 0):.0f} s left, {reserve:.0f} s kept for the "
                  "rounds)", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            with _alarm(budget):
                steps[impl], step_s[impl] = make(impl)
            warm_s[impl] = time.perf_counter() - t0
        except OutOfTime:
            print(f"  {impl}: left out (warm-up cut after {time.perf_counter() - t0:.0f} s: out of time)", flush=True)
        except Exception as exc:  # a compile failure leaves that implementation out, as the benchmark does
            print(f"  {impl}: left out ({type(exc).__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})",
                  flush=True)
    if impls[0] not in steps:
        if _STATE["deadline"] is not None:  # under a budget: no ratio for this group, the next may still run
            print(f"  the baseline {impls[0]} did not run: no ratios for this group", flush=True)
            return {}, 0
        raise SystemExit(f"the baseline {impls[0]} could not run: no ratio to take")
    names = list(steps)
    times = {impl: [] for impl in names}
    try:
        for r in range(rounds):
            if r >= 1 and _left() <= 0:
                print(f"  rounds stopped by the budget after {r}", flush=True)
                break
            this = {}
            with _alarm(_left() if r >= 1 else float("inf")):
                for i in range(len(names)):
                    impl = names[(i + r) % len(names)]
                    t0 = time.perf_counter()
                    steps[impl]()
                    this[impl] = time.perf_counter() - t0
            for impl, t in this.items():
                times[impl].append(t)
    except OutOfTime:  # the unfinished round is dropped
        if not times[names[0]]:
            raise
        print(f"  rounds stopped by the budget after {len(times[names[0]])}", flush=True)
    done = len(times[names[0]])
    if done == 0:
        return {}, 0
    base = times[names[0]]
    return {impl: (statistics.median(ts) * 1e3, [b / t for b, t in zip(base, ts)], warm_s[impl])
            for impl, ts in times.items()}, done


def report(group, results, rounds, rows, **extra):
    print(f"\n{group}")
    for impl, (ms, ratios, warm) in results.items():
        q1, med, q3 = quartiles(ratios)
        print(f"  {impl:13s} {ms:9.3f} ms   {med:5.2f}x  [{q1:.2f}, {q3:.2f}]   (warm-up {warm:.1f} s)", flush=True)
        rows.append(dict(group=group, impl=impl, median_ms=ms, ratio=med, ratio_q1=q1, ratio_q3=q3,
                         rounds=rounds, threads=torch.get_num_threads(), warm_s=warm, **extra))


def _check_time():
    if _left() <= 2:
        raise OutOfTime("budget spent")


def _model_impls(args):
    impls = args.impls or tbm._impls(args.device)
    for impl in impls:
        tbm.parse_impl(impl)  # an unknown name fails here, in one line, before anything runs
    if args.device != "cuda":
        graphs = [i for i in impls if "graph" in tbm.parse_impl(i)[1]]
        if graphs:
            print(f"  {', '.join(graphs)}: left out (CUDA graphs need --device cuda)", flush=True)
            impls = [i for i in impls if i not in graphs]
    return impls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("-k", dest="match", default="", help="only cases whose op or shape tag contains this")
    p.add_argument("--modes", nargs="+", default=None, choices=["fwd", "fwdbwd", "train", "infer"],
                   help="fwd and fwdbwd for ops (default both), train and infer with --model (default both)")
    p.add_argument("--impls", nargs="+", default=None,
                   help="implementations, the baseline first (default: the benchmark's list, the reference first)")
    p.add_argument("--model", metavar="PRESET:SIZE:BATCH", help="time whole-model steps of this config")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                   help="model steps: bf16 = the forward and losses under bf16 autocast; op cases: bf16 inputs")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=None, help="end within this many seconds (see above)")
    p.add_argument("--json", metavar="FILE", help="also write the rows here (rewritten after every group)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.budget_s is not None:
        _STATE["deadline"] = time.perf_counter() + args.budget_s
    signal.signal(signal.SIGALRM, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    rows = []

    def save():
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds, {args.dtype}"
          + (f", budget {args.budget_s:.0f} s" if args.budget_s else "")
          + "; ratio = baseline time / impl time in the same round: median [quartiles]", flush=True)
    amp = None if args.dtype == "fp32" else DTYPES[args.dtype]
    try:
        if args.model:
            (config,) = tbm._parse_configs(args.model)
            for mode in args.modes or ["train", "infer"]:
                group = tbm.group_name(config, mode, args.device, amp)
                print(f"\n{group}: warming up", flush=True)
                _check_time()
                impls = _model_impls(args)
                results, done = measure(lambda impl: warm_model_step(config, mode, args.device, impl, amp), impls,
                                        args.rounds)
                if results:
                    report(group, results, done, rows, dtype=args.dtype)
                save()
        else:
            tb.DTYPE = DTYPES[args.dtype]  # the cases' inputs (test_bench_ops reads it when it makes them)
            suffix = "" if args.dtype == "fp32" else f"-{args.dtype}"
            for case in tb._cases(args.device):
                if args.match not in f"{case.op}/{case.tag}":
                    continue
                for mode in args.modes or ["fwd", "fwdbwd"]:
                    if mode not in ("fwd", "fwdbwd") or (mode == "fwdbwd" and not case.grads):
                        continue
                    _check_time()
                    impls = args.impls or tb._impls(case, args.device)
                    results, done = measure(lambda impl: warm_step(case, mode, args.device, impl), impls,
                                            args.rounds)
                    if results:
                        report(f"{case.op}/{mode}/{case.tag}{suffix}@{args.device}", results, done, rows,
                               dtype=args.dtype)
                    save()
    except OutOfTime as exc:
        save()
        print(f"\nstopped ({exc}): {len(rows)} rows kept", flush=True)
        return 124 if _STATE["terminated"] else 0
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
