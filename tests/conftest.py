import os

# Triton kernels are tested on CPU tensors through the interpreter; it must be set before triton loads.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_backend():
    import mdrnet_fast

    torch.manual_seed(0)
    previous = mdrnet_fast.get_backend()
    yield
    mdrnet_fast.set_backend(previous)
