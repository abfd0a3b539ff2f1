"""NVIDIA's own PartialConv2d (github.com/NVIDIA/partialconv, models/partialconv2d.py), loaded from a file the
user points to: MDRNET_FAST_NVIDIA_PARTIALCONV=/path/to/partialconv2d.py. Nothing of it is copied here; the
drop-in test (tests/test_nvidia_partialconv.py) and the op benchmark's `nvidia` rows (bench/test_bench_ops.py)
run beside it when the variable is set, and are left out otherwise.

    git clone https://github.com/NVIDIA/partialconv /tmp/partialconv
    MDRNET_FAST_NVIDIA_PARTIALCONV=/tmp/partialconv/models/partialconv2d.py pytest tests/test_nvidia_partialconv.py
"""
import importlib.util
import os

ENV = "MDRNET_FAST_NVIDIA_PARTIALCONV"


def path():
    return os.environ.get(ENV) or None


def load():
    """NVIDIA's PartialConv2d class, or None when the variable is unset; a bad path raises."""
    file = path()
    if file is None:
        return None
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{ENV}={file!r} is not a file (NVIDIA's models/partialconv2d.py)")
    spec = importlib.util.spec_from_file_location("nvidia_partialconv2d", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PartialConv2d
