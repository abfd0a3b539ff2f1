"""Bad input raises ValueError/TypeError naming the argument, before any kernel runs."""
import pytest
import torch

import mdrnet_fast
from mdrnet_fast import ops

from _util import fast_backends

x, w, mask = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3), torch.ones(2, 1, 8, 8)
feat, labels = torch.randn(2, 5, 8, 8), torch.randint(0, 4, (2, 8, 8))
q, mem = torch.randn(2, 4, 6), torch.randn(4, 16, 6)
t4 = torch.randn(2, 3, 8, 8)
meta = torch.empty(2, 1, 8, 8, device="meta")

BAD = [
    ("x", lambda: ops.partial_conv2d(torch.randn(3, 8, 8), mask, w)),                      # wrong rank
    ("x", lambda: ops.partial_conv2d(x.long(), mask, w)),                                  # integer features
    ("mask", lambda: ops.partial_conv2d(x, torch.ones(3, 1, 8, 8), w)),                    # batch
    ("mask", lambda: ops.partial_conv2d(x, torch.ones(2, 1, 7, 8), w)),                    # spatial
    ("mask", lambda: ops.partial_conv2d(x, torch.ones(2, 2, 8, 8), w)),                    # channels
    ("mask", lambda: ops.partial_conv2d(x, torch.ones(2, 1, 8, 8), w, multi_channel=True)),
    ("weight", lambda: ops.partial_conv2d(x, mask, torch.randn(4, 2, 3, 3))),
    ("weight", lambda: ops.partial_conv2d(x, mask, w.double())),
    ("bias", lambda: ops.partial_conv2d(x, mask, w, torch.randn(5))),
    ("stride", lambda: ops.partial_conv2d(x, mask, w, stride=0)),
    ("groups", lambda: ops.partial_conv2d(x, mask, w, groups=0)),
    ("height", lambda: ops.partial_conv2d(torch.randn(2, 3, 2, 8), torch.ones(2, 1, 2, 8), w)),
    ("device", lambda: ops.partial_conv2d(x, meta, w)),                                    # mixed devices
    ("activation", lambda: ops.gated_conv2d(x, torch.randn(8, 3, 3, 3), activation="gelu")),
    ("2*C_out", lambda: ops.gated_conv2d(x, torch.randn(5, 3, 3, 3))),
    ("seg", lambda: ops.region_avg_pool(feat, labels + 1, 4)),                              # label >= n
    ("seg", lambda: ops.region_avg_pool(feat, labels - 1, 4)),                              # negative label
    ("num_classes", lambda: ops.region_avg_pool(feat, labels)),
    ("seg", lambda: ops.region_avg_pool(feat, labels[:1], 4)),                              # batch
    ("seg", lambda: ops.region_avg_pool(feat, torch.ones(2, 8, 8, dtype=torch.bool), 4)),
    ("feat", lambda: ops.region_avg_pool(feat.int(), labels, 4)),
    ("codes", lambda: ops.region_broadcast(torch.randn(2, 3, 5), labels, 4)),
    ("seg", lambda: ops.region_broadcast(torch.randn(2, 4, 5), labels + 1, 4)),            # label >= n
    ("seg", lambda: ops.check_labels(labels - 1, 4)),
    ("q", lambda: ops.memory_read(torch.randn(2, 3, 6), mem)),
    ("q", lambda: ops.memory_read(torch.randn(2, 4, 5), mem)),
    ("tau", lambda: ops.memory_read(q, mem, tau=0.0)),
    ("present", lambda: ops.memory_update_(mem.clone(), q, q, torch.ones(2, 3, dtype=torch.bool), 0.9)),
    ("alpha", lambda: ops.memory_update_(mem.clone(), q, q, torch.ones(2, 4, dtype=torch.bool), 1.5)),
    ("v", lambda: ops.memory_update_(mem.clone(), q, q[:1], torch.ones(2, 4, dtype=torch.bool), 0.9)),
    ("phi", lambda: ops.masked_patch_attention(t4, t4[:, :2], t4, mask, 2)),
    ("mask", lambda: ops.masked_patch_attention(t4, t4, t4, torch.ones(2, 2, 8, 8), 2)),
    ("patch_size", lambda: ops.masked_patch_attention(t4, t4, t4, mask, 0)),
    ("g", lambda: ops.masked_patch_attention(t4, t4, torch.randn(2, 3, 4, 4), mask, 2)),
    ("gamma", lambda: ops.spade_modulate(t4, t4[:, :2], t4)),
    ("beta", lambda: ops.spade_modulate(t4, t4, t4.int())),
]


@pytest.mark.parametrize("backend", ["reference"] + fast_backends("partial_conv2d"))
@pytest.mark.parametrize("name,call", BAD, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD)])
def test_bad_input_names_the_argument(name, call, backend):
    with mdrnet_fast.use_backend(backend), pytest.raises((ValueError, TypeError), match=name):
        call()


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend"):
        mdrnet_fast.set_backend("gpu")


@pytest.mark.parametrize("backend", ["reference"] + fast_backends("region_pool"))
def test_labels_checked_skips_the_check_and_nothing_else(backend):
    """labels_checked=True (labels known in range, no host sync on a GPU) gives the checked call's result."""
    with mdrnet_fast.use_backend(backend):
        codes = ops.region_avg_pool(feat, labels, 4)
        torch.testing.assert_close(ops.region_avg_pool(feat, labels, 4, labels_checked=True), codes, rtol=0, atol=0)
        out = ops.region_broadcast(codes, labels, 4)
        torch.testing.assert_close(ops.region_broadcast(codes, labels, 4, labels_checked=True), out, rtol=0, atol=0)
    ops.check_labels(labels, 4)  # in range: no error
    ops.check_labels(torch.rand(2, 4, 8, 8), 4)  # float weights: nothing to check
