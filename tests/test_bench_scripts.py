"""The bench tools run end to end on small cases: bench/paired_ratios.py on an op case and a model step (the
numbers are not checked, only that every implementation was timed in every round and the ratios are
consistent), bench/profile_model.py with its by-caller table, bench/conv_layouts.py, bench/memory_peak.py and
bench/inpaint_command.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_paired_ratios_small_case(tmp_path):
    out = tmp_path / "rows.json"
    env = dict(os.environ, MDRNET_FAST_BENCH_QUICK="1", PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "paired_ratios.py"), "-k", "memory_read",
                          "--impls", "reference", "cpu", "--rounds", "3", "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["group"].split("/")[1], r["impl"]) for r in rows] == [
        ("fwd", "reference"), ("fwd", "cpu"), ("fwdbwd", "reference"), ("fwdbwd", "cpu")]
    for r in rows:
        assert r["rounds"] == 3 and r["median_ms"] > 0
        assert r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"]
        if r["impl"] == "reference":
            assert r["ratio"] == r["ratio_q1"] == r["ratio_q3"] == 1.0


def test_paired_ratios_model_step(tmp_path):
    out = tmp_path / "rows.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "paired_ratios.py"), "--model", "cpu-demo:64:1",
                          "--modes", "infer", "--impls", "reference", "cpu+cl", "--rounds", "2", "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["group"], r["impl"]) for r in rows] == [("model/infer/cpu-demo-64-B1@cpu", "reference"),
                                                       ("model/infer/cpu-demo-64-B1@cpu", "cpu+cl")]


def test_profile_model_by_caller():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "profile_model.py"), "--device", "cpu", "--mode",
                          "infer", "--config", "cpu-demo:64:1", "--impls", "reference", "cpu+cl", "--warmup", "1",
                          "--steps", "1", "--rows", "5", "--by-caller", "aten::copy_"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("aten::copy_:") == 2 and "ms per step, by caller" in res.stdout
    assert "median step, speed-up over reference: reference" in res.stdout


def test_conv_layouts_small_shape():
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "conv_layouts.py"), "--calls", "1", "--shapes",
                          "1,4,8,9,3"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    row = res.stdout.strip().splitlines()[-1].split()
    assert row[:4] == ["B1", "4->8", "9x9", "k3"] and len(row) == 10


def test_memory_peak_lists_the_live_tensors():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "memory_peak.py"), "--preset", "cpu-demo", "--size",
                          "96x64", "--precision", "fp32", "--min-mib", "0.01", "--top", "3"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.startswith("peak (cpu-demo, 96x64, fp32):") and "within refine" in res.stdout
    assert "float32" in res.stdout


@pytest.mark.skipif(not os.path.exists("/usr/bin/time"), reason="needs GNU time at /usr/bin/time")
def test_inpaint_command_bench_small_cases(tmp_path):
    out = tmp_path / "rows.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "inpaint_command.py"), "--cases",
                          "150x100:full:fp32:auto", "300x200:resize:bf16:reference", "--json", str(out)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["width"], r["strategy"], r["backend"], r["rc"]) for r in rows] == [
        (150, "full", "auto", 0), (300, "resize", "reference", 0)]
    assert all(r["peak_rss_gib"] > 0 and r["wall_s"] > 0 and "error" not in r for r in rows)
    assert "| 150x100 | full | fp32 | auto |" in res.stdout
