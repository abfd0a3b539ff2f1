"""Does bf16 training follow fp32? Two runs of `mdrnet-fast train` (same seed, data and masks) that differ only in
--precision, and their losses every 20 steps, from each run's OUT/losses.jsonl.

    python bench/precision_losses.py                         # cpu-demo preset, default batch, 200 steps
    python bench/precision_losses.py --steps 400 --every 40 --precisions fp32 bf16 --threads 2

Writes bench/results/cpu-<threads>t-precision-losses-<date>.json and prints a markdown table: the loss of the
step, and the mean over the `--every` steps up to it (one step's loss is of one batch, noisy). Seconds per step
are of a shared machine: not speeds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _run(precision, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "mdrnet_fast", "train", "--steps", str(args.steps), "--precision", precision,
           "--seed", str(args.seed), "--threads", str(args.threads), "--out", str(out), "--no-progress",
           "--ckpt-every", str(args.steps), "--sample-every", str(args.steps), *args.extra]
    t0 = time.time()
    done = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)), capture_output=True,
                          text=True)
    if done.returncode:
        sys.exit(f"precision_losses: {' '.join(cmd[1:])} failed: {done.stderr.strip().splitlines()[-1:]}")
    lines = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    taken = [line for line in done.stdout.splitlines() if "precision" in line]
    return {"command": " ".join(["mdrnet-fast", *cmd[3:]]), "wall_seconds": round(time.time() - t0, 1),
            "said": taken[0] if taken else "", "steps": lines}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="default: bench/results/cpu-<threads>t-precision-losses-<date>.json")
    p.add_argument("extra", nargs="*", help="more `mdrnet-fast train` arguments, after --")
    args = p.parse_args()
    if args.steps < 1 or args.every < 1 or args.threads < 1:
        p.error("--steps, --every and --threads must be >= 1")

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            runs[precision] = _run(precision, args, Path(tmp) / precision)
            print(f"{precision}: {runs[precision]['wall_seconds']} s ({runs[precision]['said']})", file=sys.stderr)

    table = []
    for step in range(args.every, args.steps + 1, args.every):
        row = {"step": step}
        for precision, run in runs.items():
            window = [s["loss"] for s in run["steps"] if step - args.every < s["step"] <= step]
            row[precision] = run["steps"][step - 1]["loss"]
            row[f"{precision}_mean"] = statistics.fmean(window)
        table.append(row)
    for run in runs.values():
        run["seconds_per_step_median"] = round(statistics.median(s["seconds"] for s in run["steps"]), 3)

    names = list(runs)
    head = ("| step | " + " | ".join(f"{n} loss" for n in names) + " | "
            + " | ".join(f"{n} mean of {args.every}" for n in names) + " |")
    lines = [head, "|" + "---:|" * (1 + 2 * len(names))]
    for row in table:
        lines.append(f"| {row['step']} | " + " | ".join(f"{row[n]:.4f}" for n in names) + " | "
                     + " | ".join(f"{row[n + '_mean']:.4f}" for n in names) + " |")
    lines.append("| s/step (median, loaded machine) | " + " | ".join(
        f"{runs[n]['seconds_per_step_median']:.3f}" for n in names) + " | " + " | ".join("" for _ in names) + " |")

    import torch

    date = datetime.date.today().strftime("%Y%m%d")
    path = Path(args.json) if args.json else RESULTS / f"cpu-{args.threads}t-precision-losses-{date}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"what": "loss of `mdrnet-fast train` (cpu-demo preset, default batch) per precision, same seed",
            "torch": torch.__version__, "threads": args.threads, "date": date, "every": args.every,
            "note": "seconds are of a shared, loaded machine"}
    path.write_text(json.dumps({"meta": meta, "table": table, "runs": runs}, indent=1) + "\n")
    print("\n".join(lines))
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
