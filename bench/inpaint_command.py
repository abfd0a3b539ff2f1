"""Time and peak memory of `mdrnet-fast inpaint` on large photos, as a user runs it.

Each case is one run of the command in a fresh process under `/usr/bin/time -v` (wall time and maximum resident
set size, the whole process: Python, torch, the model, the image): a paper-preset checkpoint (random weights:
time and memory do not depend on them), a smooth synthetic photo, and about 20 % holes as a block plus strokes
(or one 512x512 hole for the crop case). Cases are SIZE:STRATEGY:PRECISION:BACKEND, e.g. 2560x1600:full:bf16:auto.

    python bench/inpaint_command.py                      # the default cases (a quarter of an hour on 2 cores)
    python bench/inpaint_command.py --cases 1920x1080:full:bf16:auto --json out.json

A run that fails (the reference backend's N x N patch attention does not fit 24 GiB at 2560x1600) is reported
with its one-line error. The memory limit per run is --limit-gib of address space.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DEFAULT_CASES = [
    "2560x1600:full:bf16:auto", "2560x1600:full:fp32:auto", "2560x1600:full:bf16:reference",
    "1920x1080:full:bf16:auto", "1920x1080:full:fp32:auto", "1920x1080:full:bf16:reference",
    "3840x2160:crop:bf16:auto", "3840x2160:auto:bf16:auto",
]


def make_checkpoint(path: Path) -> None:
    from mdrnet_fast.commands.common import PRESETS
    from mdrnet_fast.models import MDRNet

    torch.manual_seed(0)
    config = PRESETS["paper"]
    torch.save({"stage": "full", "step": 0, "config": config, "model": MDRNet(**config).state_dict()}, path)


def make_photo(width: int, height: int, path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    small = (rng.random((max(height // 64, 2), max(width // 64, 2), 3)) * 255).astype(np.uint8)
    Image.fromarray(small).resize((width, height), Image.BICUBIC).save(path)


def make_mask(width: int, height: int, path: Path, one_hole: bool, seed: int = 0) -> float:
    """White = valid. Either one 512x512 hole, or a block (~12 %) plus free-form strokes (~8 %). Returns the
    hole ratio."""
    from mdrnet_fast.data import FreeFormMasks

    holes = np.zeros((height, width), bool)
    if one_hole:
        top, left = (height - 512) // 2, (width - 512) // 2
        holes[top:top + 512, left:left + 512] = True
    else:
        bh, bw = int(height * 0.35), int(width * 0.35)
        holes[height // 5:height // 5 + bh, width // 4:width // 4 + bw] = True
        strokes = FreeFormMasks((height, width), ratio=(0.08, 0.10), seed=seed).sample(np.random.default_rng(seed))
        holes |= strokes[0].numpy() < 0.5
    Image.fromarray(np.where(holes, 0, 255).astype(np.uint8)).save(path)
    return float(holes.mean())


def run_case(case: str, ckpt: Path, work: Path, limit_gib: float, threads: int) -> dict:
    size, strategy, precision, backend = case.split(":")
    width, height = map(int, size.split("x"))
    image, mask, out = work / f"photo-{size}.png", work / f"mask-{size}-{strategy}.png", work / "out.png"
    if not image.exists():
        make_photo(width, height, image)
    ratio = make_mask(width, height, mask, one_hole=strategy == "crop")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "mdrnet_fast", "inpaint", "--checkpoint", str(ckpt),
           "--image", str(image), "--mask", str(mask), "--out", str(out), "--strategy", strategy,
           "--precision", precision, "--backend", backend, "--threads", str(threads), "--no-progress"]
    limit = int(limit_gib * 2 ** 30)

    def cap():  # a failed allocation ends the run with an error instead of the machine swapping or dying
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=cap)
    wall = time.perf_counter() - start
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    row = {"case": case, "width": width, "height": height, "strategy": strategy, "precision": precision,
           "backend": backend, "hole_ratio": round(ratio, 3), "threads": threads, "wall_s": round(wall, 1),
           "peak_rss_gib": round(int(rss.group(1)) / 2 ** 20, 2) if rss else None, "rc": proc.returncode}
    said = [line for line in proc.stdout.splitlines() if "strategy" in line]
    row["plan"] = said[0].split(": ", 1)[1] if said else None
    if proc.returncode:
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
        row["error"] = errors[0] if errors else proc.stderr.strip().splitlines()[-1:]
    elif Image.open(out).size != (width, height):
        row["error"] = f"output is {Image.open(out).size}, not {width}x{height}"
    return row


def table(rows) -> str:
    lines = ["| image | strategy | precision | backend | holes | wall (s) | peak RSS (GiB) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = r.get("error") or r.get("plan") or ""
        lines.append(f"| {r['width']}x{r['height']} | {r['strategy']} | {r['precision']} | {r['backend']} | "
                     f"{r['hole_ratio']:.0%} | {r['wall_s']} | {r['peak_rss_gib']} | {note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, metavar="SIZE:STRATEGY:PRECISION:BACKEND")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-gib", type=float, default=20.0, help="address-space limit of each run")
    parser.add_argument("--json", help="default: bench/results/cpu-<threads>t-inpaint-<date>.json")
    args = parser.parse_args(argv)
    stamp = datetime.date.today().strftime("%Y%m%d")
    out = Path(args.json or Path(__file__).parent / "results" / f"cpu-{args.threads}t-inpaint-{stamp}.json")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_checkpoint(work / "paper.ckpt")
        for case in args.cases:
            rows.append(run_case(case, work / "paper.ckpt", work, args.limit_gib, args.threads))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"command": " ".join(["python", "bench/inpaint_command.py", *(argv or sys.argv[1:])]),
            "torch": torch.__version__, "cpu": _cpu_name(), "date": stamp}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"\n{table(rows)}\n\nwritten: {out}")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
