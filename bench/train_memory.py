"""Peak memory of one training step of `mdrnet-fast train`: full stage, paper preset, per image size, batch,
kernel backend and activation checkpointing. On CPU the process's peak RSS; on a CUDA machine (where training
runs on the GPU) also torch.cuda.max_memory_allocated, the number that decides the largest batch that fits.

    python bench/train_memory.py                                  # 512 and 768, reference and auto, both ways
    python bench/train_memory.py --sizes 256 --backends auto --threads 2 --json /tmp/mem.json
    python bench/train_memory.py --sizes 1024 --batch 2           # on a GPU (bench/gpu_proof.sh's last stage)

Each configuration runs in a fresh process (mdrnet_fast.training.Trainer, then one train_step: forward, losses,
backward, Adam steps of the network and the critic, with the first step's Adam state), so no allocator cache or
earlier peak carries over. The process's peak RSS (getrusage ru_maxrss) is the number; the RSS before the step
(model, critic, data) is printed beside it. A configuration over --max-minutes or --max-gib, or one that would leave
the machine under 1 GiB free, is stopped and reported as skipped. Wall times are of a shared machine: not speeds.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _proc_mib(path: str, key: str, missing: float) -> float:
    """The kB field `key` of a /proc file, in MiB (`missing` if the file or the field is not there)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return missing


def _child(args) -> None:
    """One configuration, in this process: prints one JSON line."""
    import torch

    from mdrnet_fast.training import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(preset="paper", image_size=args.size, batch_size=args.batch, steps=1, out=out,
                          no_progress=True,
                          threads=args.threads, backend=args.backend, synthetic_size=8,
                          checkpoint_activations=args.checkpoint_activations)
        trainer = Trainer(cfg)
        batch = next(trainer.batches)
        before = _proc_mib("/proc/self/status", "VmRSS:", float("nan"))
        cuda = torch.cuda.is_available()
        gpu_before = torch.cuda.memory_allocated() / 2 ** 20 if cuda else None
        trainer.model.train()
        t0 = time.perf_counter()
        result = trainer.train_step(batch)
        loss = float(result["losses"]["loss"])  # waits for the GPU
        seconds = time.perf_counter() - t0
    import mdrnet_fast

    gpu = {"gpu": torch.cuda.get_device_name(0), "gpu_before_step_mib": round(gpu_before, 1),
           "gpu_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)} if cuda else {}
    print(json.dumps(gpu | {"rss_before_step_mib": round(before, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "step_seconds": round(seconds, 2), "loss": loss, "backend_taken": mdrnet_fast.get_backend(),
                      "torch_threads": torch.get_num_threads()}))


def _measure(size, backend, ckpt, args) -> dict:
    """Runs one configuration in a fresh process, watching its time and memory."""
    cmd = [sys.executable, __file__, "--child", "--size", str(size), "--backend", backend, "--threads", str(args.threads),
           "--batch", str(args.batch)]
    if ckpt:
        cmd.append("--checkpoint-activations")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    row = {"image_size": size, "batch": args.batch, "backend": backend, "checkpoint_activations": ckpt,
           "command": " ".join(cmd[1:])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    start, watched = time.time(), 0.0
    while proc.poll() is None:
        watched = max(watched, _proc_mib(f"/proc/{proc.pid}/status", "VmRSS:", 0.0))
        why = None
        if time.time() - start > args.max_minutes * 60:
            why = f"over {args.max_minutes:g} minutes"
        elif watched > args.max_gib * 1024:
            why = f"over {args.max_gib:g} GiB RSS"
        elif _proc_mib("/proc/meminfo", "MemAvailable:", float("inf")) < 1024:
            why = f"the machine fell under 1 GiB free at {watched / 1024:.1f} GiB RSS"
        if why:
            proc.kill()
            proc.communicate()
            return row | {"skipped": why, "wall_seconds": round(time.time() - start, 1)}
        time.sleep(0.1)
    out, err = proc.communicate()
    row["wall_seconds"] = round(time.time() - start, 1)
    if proc.returncode:
        return row | {"skipped": f"failed (exit {proc.returncode}): {(err.strip().splitlines() or ['?'])[-1]}"}
    return row | json.loads(out.strip().splitlines()[-1])


def _table(rows) -> str:
    lines = ["| size | backend | checkpoint activations | peak RSS (GiB) | RSS before the step (GiB) | step (s, loaded machine) |",
             "|---:|---|---|---:|---:|---:|"]
    for r in rows:
        ck = "on" if r["checkpoint_activations"] else "off"
        backend = r["backend"] if "backend_taken" not in r or r["backend_taken"] == r["backend"] else \
            f"{r['backend']} ({r['backend_taken']})"
        if "skipped" in r:
            lines.append(f"| {r['image_size']} | {backend} | {ck} | skipped: {r['skipped']} | | |")
        else:
            gpu = (f" | {r['gpu_peak_allocated_mib'] / 1024:.2f}" if "gpu_peak_allocated_mib" in r else "")
            lines.append(f"| {r['image_size']} | {backend} | {ck} | {r['peak_rss_mib'] / 1024:.2f} | "
                         f"{r['rss_before_step_mib'] / 1024:.2f} | {r['step_seconds']:.1f}{gpu} |")
    if any("gpu_peak_allocated_mib" in r for r in rows):
        lines[0] += " GPU peak allocated (GiB) |"
        lines[1] += "---:|"
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 768])
    p.add_argument("--backends", nargs="+", default=["reference", "auto"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1, help="images per step")
    p.add_argument("--max-minutes", type=float, default=4.0, help="stop a configuration after this long")
    p.add_argument("--max-gib", type=float, default=20.0, help="stop a configuration over this peak RSS")
    p.add_argument("--json", default=None, help="default: bench/results/cpu-<threads>t-train-memory-<date>.json")
    # one configuration (what the parent runs in a fresh process)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--checkpoint-activations", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args)
        return 0
    if any(s < 1 for s in args.sizes) or args.threads < 1 or args.batch < 1:
        p.error("--sizes, --threads and --batch must be >= 1")
    rows = []
    for size in args.sizes:
        for backend in args.backends:
            for ckpt in (False, True):
                rows.append(_measure(size, backend, ckpt, args))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    import torch

    date = datetime.date.today().strftime("%Y%m%d")
    path = Path(args.json) if args.json else RESULTS / f"cpu-{args.threads}t-train-memory-{date}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"what": f"peak memory of one full-stage training step, paper preset, batch {args.batch}, fp32",
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": args.threads, "date": date,
            "note": "fresh process per row; wall times are of a shared, loaded machine"}
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(_table(rows))
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
