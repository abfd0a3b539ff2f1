"""Session settings of the benchmarks (bench/README.md).

The normal test run never collects this folder: pyproject.toml sets testpaths = ["tests"].
Env: MDRNET_FAST_BENCH_THREADS=N sets torch's intra-op threads (default: torch's own choice);
MDRNET_FAST_BENCH_QUICK=1 picks the small shapes and few rounds (read by test_bench_ops.py and
test_bench_model.py); MDRNET_FAST_BENCH_MODEL=preset:size:batch,... the model configurations.
"""
import importlib.util
import os

import torch

if importlib.util.find_spec("pytest_benchmark") is None:
    raise ImportError("the benchmarks need pytest-benchmark: pip install 'mdrnet_fast[test]'")


def pytest_configure(config):
    # torch.compile's internals trip this deprecation; it says nothing about the benchmarks
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    # set before any test runs, so torch.compile's generated code sees the same count as eager ops
    threads = os.environ.get("MDRNET_FAST_BENCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))


def pytest_benchmark_update_machine_info(config, machine_info):
    import mdrnet_fast

    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    machine_info["mdrnet_fast_backends"] = {
        name: {"available": b["available"], "reason": b["reason"], "kernels": b["kernels"]}
        for name, b in mdrnet_fast.backends().items()
    }
    machine_info["quick"] = os.environ.get("MDRNET_FAST_BENCH_QUICK", "0") == "1"
