import os

# Triton kernels are tested on CPU tensors through the interpreter; it must be set before triton loads.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run, so CI is reproducible; explore new examples
# locally with `pytest --hypothesis-profile=explore`.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _seed_and_backend():
    import mdrnet_fast

    torch.manual_seed(0)
    previous = mdrnet_fast.get_backend()
    yield
    mdrnet_fast.set_backend(previous)
