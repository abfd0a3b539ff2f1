"""The benchmark report: ratios from medians, merged runs (best median per row), and the CLI on saved JSONs."""
import json

from mdrnet_fast import bench_report, cli


def _bench(group, impl, median, mean=None):
    return {"group": group, "name": f"test_op[{group}-{impl}]", "extra_info": {"impl": impl},
            "stats": {"median": median, "mean": mean or median, "rounds": 5}}


def _run(*rows):
    return {"machine_info": {}, "benchmarks": [_bench(*r) for r in rows]}


def test_ratios_against_reference_compile_and_conv():
    g = "partial_conv2d/fwdbwd/x@cpu"
    rows = bench_report.build_table(_run((g, "reference", 0.03), (g, "cpu", 0.02), (g, "compile", 0.024),
                                         (g, "conv2d", 0.016)))
    cpu = next(r for r in rows if r.impl == "cpu")
    assert abs(cpu.vs_reference - 1.5) < 1e-12 and abs(cpu.vs_compile - 1.2) < 1e-12
    assert abs(cpu.over_conv2d - 1.25) < 1e-12


def test_merge_takes_each_rows_best_median():
    g = "region_avg_pool/fwd/x@cpu"
    slow_ref = _run((g, "reference", 0.004), (g, "cpu", 0.001))
    slow_cpu = _run((g, "reference", 0.002), (g, "cpu", 0.0015))
    merged = bench_report.merge_runs([slow_ref, slow_cpu])
    rows = {r.impl: r for r in bench_report.build_table(merged)}
    assert rows["reference"].median_ms == 2.0 and rows["cpu"].median_ms == 1.0
    assert abs(rows["cpu"].vs_reference - 2.0) < 1e-12
    assert merged["merged_runs"] == 2 and bench_report.merge_runs([slow_ref]) is slow_ref


def test_cli_reports_several_runs(tmp_path, capsys):
    g = "spade_modulate/fwd/x@cpu"
    paths = []
    for i, (ref, cpu) in enumerate([(0.01, 0.002), (0.008, 0.004)]):
        p = tmp_path / f"run{i}.json"
        p.write_text(json.dumps(_run((g, "reference", ref), (g, "cpu", cpu))))
        paths.append(str(p))
    assert cli.main(["bench-report", *paths]) == 0
    out = capsys.readouterr().out
    assert "2 runs merged" in out and "4.00x" in out  # best reference 8 ms over best cpu 2 ms


def test_measured_order_ranks_by_geometric_mean_and_takes_the_reference_when_it_always_wins():
    a, b, p = "memory_read/fwd/x@cuda", "memory_read/fwdbwd/x@cuda", "masked_patch_attention/fwd/x@cuda"
    rows = bench_report.build_table(_run(
        (a, "reference", 0.004), (a, "cuda", 0.001), (a, "triton", 0.003),
        (b, "reference", 0.004), (b, "cuda", 0.006), (b, "triton", 0.005),  # triton wins a row, loses overall
        (p, "reference", 0.001), (p, "triton", 0.002),
        ("memory_read/fwd/x@cpu", "triton", 1e-9)))  # CPU rows say nothing about the order on CUDA
    assert bench_report.measured_order(rows) == {"memory_read": ("cuda", "triton"), "patch_attention": ()}


def test_auto_order_on_cuda_is_the_committed_gpu_tables():
    """_dispatch._CUDA_ORDER is what the committed GPU op benchmarks measured: a new table that flips an
    order fails here until the dispatch order follows it."""
    from pathlib import Path

    from mdrnet_fast import _dispatch

    tables = sorted(Path(__file__).resolve().parent.parent.glob("bench/results/nvidia-*-ops-*.json"))
    assert tables, "no committed GPU op benchmark table"
    newest = max(tables, key=lambda p: p.name.rsplit("-", 1)[1])  # by the date in the name
    measured = bench_report.measured_order(bench_report.build_table(bench_report.load(newest)))
    assert measured == _dispatch._CUDA_ORDER, newest.name
