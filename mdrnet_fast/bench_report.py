"""Comparison table and bar chart from a pytest-benchmark JSON written by bench/ (test_bench_ops.py,
test_bench_model.py).

    rows = build_table(load("bench/results/cpu-2t-....json"))
    print(format_table(rows))
    plot(rows, "bench.png")

Speed-ups compare medians (robust to the odd slow round); > 1 means faster than the baseline. Several
runs of the same benchmarks can be merged (`merge_runs`: best median per row) before the table is built.
Whole-model rows (group "model/...") also get images/s (batch / mean time) and the peak memory.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union


@dataclass
class Row:
    group: str                      # "<op>/<mode>/<shape tag>@<device>" or "model/<mode>/<config>@<device>"
    impl: str                       # reference, cpu, triton, cuda, compile, conv2d
    mean_ms: float
    median_ms: float
    rounds: int
    vs_reference: Optional[float]   # reference median / this median
    vs_compile: Optional[float]     # compile median / this median
    over_conv2d: Optional[float]    # this median / plain F.conv2d median (conv ops only)
    real_kernel: Optional[bool]     # fast backends: has its own kernels (False = composite PyTorch path)
    # whole-model rows only (None on op rows)
    model: bool = False
    images_per_s: Optional[float] = None  # batch / mean time
    peak_mem_mib: Optional[float] = None  # CUDA peak allocated over the timed rounds; None = not measured
    kernels: Optional[str] = None         # fast backends: "own/asked" kernels of the step


def load(path: Union[str, Path]) -> dict:
    with open(path) as f:
        return json.load(f)


def merge_runs(runs: List[dict]) -> dict:
    """Several runs of the same benchmarks as one: per (group, impl) the entry with the smallest median.
    A noisy spell on a shared machine only ever slows a run down, so the best of a few runs is the better
    estimate; ratios are then taken between these best medians. The first run's machine info is kept."""
    if len(runs) == 1:
        return runs[0]
    best, order = {}, []
    for data in runs:
        for b in data["benchmarks"]:
            key = (b["group"], b["extra_info"].get("impl", b["name"]))
            if key not in best:
                order.append(key)
            if key not in best or b["stats"]["median"] < best[key]["stats"]["median"]:
                best[key] = b
    merged = dict(runs[0], benchmarks=[best[k] for k in order])
    merged["merged_runs"] = len(runs)
    return merged


def build_table(data: dict) -> List[Row]:
    """One row per (group, impl), in the order the benchmarks ran."""
    medians, rows = {}, []
    for b in data["benchmarks"]:
        medians[(b["group"], b["extra_info"].get("impl"))] = b["stats"]["median"]

    def ratio(num, den):
        return num / den if num is not None and den else None

    for b in data["benchmarks"]:
        info, stats, group = b["extra_info"], b["stats"], b["group"]
        impl, med = info.get("impl", b["name"]), stats["median"]
        model = group.startswith("model/")
        own, missing = info.get("kernels"), info.get("missing_kernels")
        rows.append(Row(group=group, impl=impl, mean_ms=stats["mean"] * 1e3, median_ms=med * 1e3,
                        rounds=stats["rounds"],
                        vs_reference=ratio(medians.get((group, "reference")), med),
                        vs_compile=ratio(medians.get((group, "compile")), med),
                        over_conv2d=ratio(med, medians.get((group, "conv2d"))),
                        real_kernel=info.get("real_kernel"), model=model,
                        # from the stats, so it is the same mean as the table's whatever the JSON's extra_info says
                        images_per_s=ratio(info.get("batch"), stats["mean"]) if model else None,
                        peak_mem_mib=info.get("peak_mem_mib") if model else None,
                        kernels=f"{len(own)}/{len(own) + len(missing)}" if model and own is not None else None))
    order = {g: i for i, g in enumerate(dict.fromkeys(r.group for r in rows))}
    return sorted(rows, key=lambda r: order[r.group])  # stable: keeps the impl order within a group


def describe_run(data: dict) -> str:
    """One line on the run: torch, threads, quick or not, and the fast backends it had (or why not)."""
    info = data.get("machine_info", {})
    parts = [f"torch {info.get('torch', '?')}", f"{info.get('torch_threads', '?')} threads"]
    if info.get("cuda_device"):
        parts.append(info["cuda_device"])
    if info.get("quick"):
        parts.append("quick shapes")
    for name, b in info.get("mdrnet_fast_backends", {}).items():
        if name != "reference":
            parts.append(f"{name}: " + (f"{len(b['kernels'])} kernels" if b["available"]
                                        else f"unavailable ({b.get('reason') or '?'})"))
    return "; ".join(parts)


def format_table(rows: List[Row]) -> str:
    """Fixed-width text; the group is printed on its first row only.

    Columns `img/s` and `peak MiB` appear when there are model rows (`-` on op rows, `n/a` where the
    peak was not measured: CPU); `/ conv2d` is left out only when every row is a model row.
    """
    def x(v):
        return f"{v:.2f}x" if v is not None else "-"

    def kernel(r):
        if r.kernels is not None:  # model rows: how many of the step's kernels are the backend's own
            return r.kernels
        return "-" if r.real_kernel is None else ("yes" if r.real_kernel else "composite")

    has_model, has_ops = any(r.model for r in rows), any(not r.model for r in rows)
    head = ("group", "impl", "kernel", "mean ms", "median ms", "vs ref", "vs compile") \
        + (("/ conv2d",) if has_ops else ()) + (("img/s", "peak MiB") if has_model else ())
    body, last = [], None
    for r in rows:
        cells = (r.group if r.group != last else "", r.impl, kernel(r), f"{r.mean_ms:.3f}", f"{r.median_ms:.3f}",
                 x(r.vs_reference), x(r.vs_compile)) + ((x(r.over_conv2d),) if has_ops else ())
        if has_model:
            cells += ((f"{r.images_per_s:.2f}" if r.images_per_s is not None else "-",
                       "-" if not r.model else (f"{r.peak_mem_mib:.0f}" if r.peak_mem_mib is not None else "n/a")))
        body.append(cells)
        last = r.group
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = []
    for i, cells in enumerate([head, *body]):
        if i > 1 and cells[0]:
            lines.append("")  # a blank line between groups
        lines.append("  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# the dispatch kernel family (mdrnet_fast._dispatch) that each op of bench/test_bench_ops.py is timed for
OP_FAMILY = {"partial_conv2d": "partial_conv2d", "gated_conv2d": "gated_activation", "region_avg_pool": "region_pool",
             "region_broadcast": "region_broadcast", "memory_read": "memory_read", "memory_update_": "memory_update",
             "spade_modulate": "spade_modulate", "masked_patch_attention": "patch_attention"}


def measured_order(rows: List[Row], impls: Tuple[str, ...] = ("cuda", "triton")) -> Dict[str, Tuple[str, ...]]:
    """The order `auto` should try the fast backends in on CUDA, per kernel family, from CUDA op rows (forward
    and forward + backward alike): by the geometric mean of their medians over the rows where every one of them
    ran its own kernels (a composite fallback is not that backend's kernel). () where the reference beat each of them in
    every row: then `auto` should take the reference. This is what `_dispatch._CUDA_ORDER` must say for the
    committed GPU table (tests/test_bench_report.py)."""
    groups: Dict[str, Dict[str, Row]] = {}
    for r in rows:
        if not r.model and r.group.endswith("@cuda"):
            groups.setdefault(r.group, {})[r.impl] = r
    logs: Dict[str, Dict[str, List[float]]] = {}
    ref_always: Dict[str, bool] = {}
    for group, by_impl in groups.items():
        family = OP_FAMILY.get(group.split("/", 1)[0])
        timed = [i for i in impls if i in by_impl and by_impl[i].real_kernel is not False]
        if family is None or not timed:
            continue
        fam = logs.setdefault(family, {i: [] for i in impls})
        for i in timed:
            fam[i].append(math.log(by_impl[i].median_ms))
        ref = by_impl.get("reference")
        ref_always[family] = ref_always.get(family, True) and ref is not None and all(
            ref.median_ms < by_impl[i].median_ms for i in timed)
    order = {}
    for family, fam in logs.items():
        n = max(len(v) for v in fam.values())
        ranked = sorted((sum(v) / n, i) for i, v in fam.items() if len(v) == n)  # every row or not at all
        order[family] = () if ref_always[family] else tuple(i for _, i in ranked)
    return order


def plot(rows: List[Row], path: Union[str, Path]) -> None:
    """Horizontal bar chart of the speed-up over `reference`, per group and impl (log scale)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # no display needed (servers, CI)
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install 'mdrnet_fast[plot]'") from exc

    groups = list(dict.fromkeys(r.group for r in rows))
    impls = [i for i in dict.fromkeys(r.impl for r in rows) if i != "reference"]
    by_key = {(r.group, r.impl): r.vs_reference for r in rows}
    bar = 0.8 / max(len(impls), 1)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.22 * len(groups) * max(len(impls), 1)))
    for k, impl in enumerate(impls):
        ys = [g_i + (k - (len(impls) - 1) / 2) * bar for g_i, g in enumerate(groups) if by_key.get((g, impl))]
        xs = [by_key[(g, impl)] for g in groups if by_key.get((g, impl))]
        # bars grow from 1x: right = faster than reference, left = slower
        ax.barh(ys, [x - 1 for x in xs], left=1, height=bar, label=impl)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    values = [v for v in by_key.values() if v]
    if values:  # symmetric around 1x, so faster and slower read alike
        lim = max(2.0, max(max(values), 1 / min(values)) * 1.3)
        ax.set_xlim(1 / lim, lim)
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels(groups, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over reference (median; > 1 is faster)")
    lo, hi = ax.get_xlim()
    ax.set_xticks([m * 10.0 ** e for e in range(-4, 5) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
