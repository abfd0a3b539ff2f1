"""The `mdrnet-fast` command (also `python -m mdrnet_fast`).

Each subcommand is an `_add_<name>(subparsers)` function that registers its parser and sets
`func(args) -> exit code`; add a new one to SUBCOMMANDS.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

from PIL import UnidentifiedImageError

from .commands.common import CommandError

# --------------------------------------------------------------------------- backends


def _add_backends(sub) -> None:
    p = sub.add_parser("backends", help="list the kernel backends, whether they are available, and their kernels")
    p.set_defaults(func=_run_backends)


_SHORT = {"forward": "fwd", "backward": "bwd"}


def _kernel_summary(kernels: List[str]) -> str:
    """["a.forward", "a.backward", "b.forward"] -> "a (fwd+bwd), b (fwd)"."""
    passes = {}
    for k in kernels:
        family, _, kind = k.rpartition(".")
        if kind in _SHORT:
            passes.setdefault(family, []).append(_SHORT[kind])
        else:  # free text, e.g. the reference's "all (plain PyTorch)"
            passes.setdefault(k, [])
    return ", ".join(f"{f} ({'+'.join(sorted(p, reverse=True))})" if p else f for f, p in passes.items()) or "none"


def _run_backends(args) -> int:
    import mdrnet_fast

    rows = [(name, "yes" if b["available"] else "no", _kernel_summary(b["kernels"]) if b["available"] else b["reason"])
            for name, b in mdrnet_fast.backends().items()]
    width = [max(len(r[i]) for r in rows + [("backend", "available", "")]) for i in range(2)]
    print(f"{'backend'.ljust(width[0])}  {'available'.ljust(width[1])}  kernels (or why not available)")
    for name, ok, detail in rows:
        print(f"{name.ljust(width[0])}  {ok.ljust(width[1])}  {detail}")
    print(f"\ncurrent setting: {mdrnet_fast.get_backend()} (MDRNET_FAST_BACKEND or mdrnet_fast.set_backend)")
    return 0


# --------------------------------------------------------------------------- bench


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmark every op: reference vs fast backends vs torch.compile",
                       description="Runs the pytest-benchmark suite in bench/ and prints the comparison table.")
    p.add_argument("--quick", action="store_true", help="small shapes and few rounds (about a minute)")
    p.add_argument("--json", metavar="PATH", help="where to write the pytest-benchmark JSON "
                   "(default: bench/results/<device>-<date>-<time>.json)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the speed-up over reference as a bar chart")
    p.add_argument("--filter", metavar="EXPR", help="pytest -k expression, e.g. 'partial_conv2d and fwdbwd'")
    p.add_argument("--threads", type=int, metavar="N", help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="run the benchmarks N times (JSON files -run1..N) and report each row's best median: "
                        "on a shared machine a slow spell only ever slows a run down")
    p.set_defaults(func=_run_bench)


def _add_bench_report(sub) -> None:
    p = sub.add_parser("bench-report", help="print the table (and plot) of saved benchmark JSONs")
    p.add_argument("json", metavar="PATH", nargs="+",
                   help="one run, or several runs of the same benchmarks: each row then takes its best median")
    p.add_argument("--plot", metavar="FILE.png")
    p.set_defaults(func=_run_bench_report)


def _bench_dir() -> Path:
    import mdrnet_fast

    return Path(mdrnet_fast.__file__).resolve().parent.parent / "bench"


def _device_tag(threads: Optional[int]) -> str:
    import torch

    if torch.cuda.is_available():
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")
    return f"cpu-{threads or torch.get_num_threads()}t"


def _cpu_busy(seconds: float = 0.3) -> Optional[float]:
    """Fraction of CPU time other processes use now (Linux /proc/stat); None where unknown."""
    def sample():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        return sum(ticks), ticks[3] + ticks[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def _report(json_paths: List[Path], plot_path: Optional[str]) -> int:
    from . import bench_report

    data = bench_report.merge_runs([bench_report.load(p) for p in json_paths])
    rows = bench_report.build_table(data)
    if not rows:
        print(f"no benchmarks in {', '.join(map(str, json_paths))}", file=sys.stderr)
        return 1
    if len(json_paths) > 1:
        print(f"{len(json_paths)} runs merged: each row is its best median over the runs")
    print(bench_report.describe_run(data) + "\n")
    print(bench_report.format_table(rows))
    order = bench_report.measured_order(rows)
    if order:
        print("\nfastest first per kernel family (what `auto` should try on this device; () = the reference):")
        for family, impls in sorted(order.items()):
            print(f"  {family}: {', '.join(impls) or '()'}")
    if plot_path:
        try:
            bench_report.plot(rows, plot_path)
        except RuntimeError as exc:
            print(f"mdrnet-fast: {exc}", file=sys.stderr)
            return 1
        print(f"\nplot: {plot_path}")
    return 0


def _run_bench(args) -> int:
    bench = _bench_dir()
    if not (bench / "test_bench_ops.py").is_file():
        print(f"mdrnet-fast bench: no benchmarks at {bench}. They ship with the source tree, not the wheel: "
              "run from a git checkout (pip install --no-build-isolation -e .).", file=sys.stderr)
        return 2
    if importlib.util.find_spec("pytest_benchmark") is None:
        print("mdrnet-fast bench: needs pytest and pytest-benchmark: pip install 'mdrnet_fast[test]'", file=sys.stderr)
        return 2
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = Path(args.json) if args.json else bench / "results" / f"{_device_tag(args.threads)}-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)

    env = dict(os.environ)
    # the subprocess must import this same mdrnet_fast, not another one installed elsewhere
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(bench.parent), env.get("PYTHONPATH")) if p)
    if args.quick:
        env["MDRNET_FAST_BENCH_QUICK"] = "1"
    if args.threads:
        env["MDRNET_FAST_BENCH_THREADS"] = str(args.threads)
    # --benchmark-quiet: our table below replaces pytest-benchmark's very wide one
    cmd = [sys.executable, "-m", "pytest", str(bench), "--benchmark-only", f"--benchmark-json={json_path}",
           "--benchmark-quiet", "-q", "-p", "no:cacheprovider"]
    if args.filter:
        cmd += ["-k", args.filter]
    busy = _cpu_busy()
    if busy is not None and busy > 0.3:  # OpenMP threads waiting for a busy core stall for whole scheduler slices
        print(f"note: the CPUs are {busy:.0%} busy with other work: timings will be noisy; --threads 1 suffers least",
              flush=True)
    paths = [json_path] if args.repeat == 1 else [
        json_path.with_name(f"{json_path.stem}-run{i + 1}{json_path.suffix}") for i in range(args.repeat)]
    rc = 0
    for path in paths:
        run = [c if not c.startswith("--benchmark-json=") else f"--benchmark-json={path}" for c in cmd]
        print("running:", " ".join(run), flush=True)
        rc = subprocess.call(run, cwd=bench.parent, env=env) or rc
        if not path.is_file():
            print(f"mdrnet-fast bench: pytest exited with {rc} and wrote no results", file=sys.stderr)
            return rc or 1
    print("\nresults: " + " ".join(map(str, paths)) + "\n")
    report_rc = _report(paths, args.plot)
    return rc or report_rc


def _run_bench_report(args) -> int:
    return _report([Path(p) for p in args.json], args.plot)


# --------------------------------------------------------------------------- entry point

def _add_model_commands(sub) -> None:
    from .commands import evaluate, inpaint, train

    for command in (train, inpaint, evaluate):
        command.add_parser(sub)


SUBCOMMANDS = [_add_model_commands, _add_backends, _add_bench, _add_bench_report]

# Bad input: the message says what to fix, a traceback would only hide it.
USAGE_ERRORS = (CommandError, ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                PermissionError, UnidentifiedImageError)
_DEBUG_HELP = "on an error, raise it with its full traceback instead of the one-line message"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """argparse's usage errors in one line too (the usage of `train` alone is a screenful)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mdrnet-fast", description="mdrnet_fast: fused kernels and MDRNet.")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    for p in sub.choices.values():  # `mdrnet-fast COMMAND --debug` too; SUPPRESS keeps a global --debug
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def main(argv: Optional[List[str]] = None) -> int:
    """Run a subcommand; its errors end in one line on stderr: exit 2 for bad input, 1 for failures, 130 for ^C."""
    args = build_parser().parse_args(argv)
    if args.debug:
        return args.func(args)
    prefix = f"mdrnet-fast {args.command}:"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{prefix} interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        # a command's own `raise SystemExit("mdrnet-fast: ...")`: bad input, as a CommandError
        print(f"{prefix} error: {_first_line(exc).removeprefix('mdrnet-fast: ')}", file=sys.stderr)
        return 2
    except USAGE_ERRORS as exc:
        print(f"{prefix} error: {_first_line(exc) or type(exc).__name__}", file=sys.stderr)
        return 2
    except Exception as exc:
        what = ": ".join(filter(None, (type(exc).__name__, _first_line(exc))))
        print(f"{prefix} error: {what} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
