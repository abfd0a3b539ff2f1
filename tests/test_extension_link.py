"""The built C++ modules must load the shared libstdc++ (setup.py refuses them otherwise): a module with its
own static copy next to torch's shared one segfaults on its first error message (seen on a GPU image whose
CC/CXX link libstdc++ statically)."""
import glob
import os
import shutil
import subprocess

import pytest

import mdrnet_fast

MODULES = sorted(glob.glob(os.path.join(os.path.dirname(mdrnet_fast.__file__), "_C*.so")))


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils)")
@pytest.mark.skipif(not MODULES, reason="no C++ extension built")
@pytest.mark.parametrize("path", MODULES, ids=os.path.basename)
def test_module_links_shared_libstdcxx(path):
    dynamic = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    assert "[libstdc++.so" in dynamic, f"{path} does not load the shared libstdc++"


def test_error_message_with_numbers_does_not_crash():
    """The crash's trigger: a C++ argument error whose message formats a number."""
    import torch

    if not mdrnet_fast.backends()["cpu"]["available"]:
        pytest.skip("C++ extension not built")
    from mdrnet_fast import _C

    with pytest.raises(RuntimeError, match="tau must be a finite number > 0, got 0"):
        _C.memory_read_forward(torch.randn(2, 3, 5), torch.randn(3, 4, 5), 0.0)
