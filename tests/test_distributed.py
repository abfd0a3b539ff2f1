"""Data parallelism: every rank applies the same memory update from the gathered batch (SPEC §4)."""
import os
import socket
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mdrnet_fast.nn import DisentangledMemory


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(steps=3, batch=8, n=5, c=6):
    gen = torch.Generator().manual_seed(3)
    return [(torch.randn(batch, n, c, generator=gen), torch.randn(batch, n, c, generator=gen),
             torch.rand(batch, n, generator=gen) > 0.3) for _ in range(steps)]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    mem = DisentangledMemory(6, num_classes=5, slots=16, alpha=0.7).train()
    for q, v, present in _batches():
        share = slice(rank * len(q) // world, (rank + 1) * len(q) // world)
        mem(q[share], v[share], present[share])
    torch.save(mem.memory, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()  # both ranks are done before either closes its connections
    dist.destroy_process_group()


def _spawn(world, out_dir):
    """Runs the ranks. A rank that aborts (SIGABRT: gloo's "terminate called without an active exception")
    while tearing its connections down after every rank saved its result is the transport's shutdown, not
    the memory's: seen once in CI. The results are then complete and are checked as usual."""
    try:
        mp.spawn(_worker, args=(world, _free_port(), str(out_dir)), nprocs=world, join=True)
    except mp.ProcessExitedException as exc:
        saved = all((out_dir / f"rank{r}.pt").exists() for r in range(world))
        if not (saved and exc.signal_name == "SIGABRT"):
            raise
        warnings.warn(f"a gloo rank aborted at teardown after saving its result: {exc}")


@pytest.mark.slow
def test_two_gloo_ranks_keep_identical_memories_equal_to_one_process(tmp_path):
    _spawn(2, tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(rank0, rank1)
    torch.manual_seed(0)
    single = DisentangledMemory(6, num_classes=5, slots=16, alpha=0.7).train()
    before = single.memory.clone()
    for q, v, present in _batches():
        single(q, v, present)
    assert not torch.equal(single.memory, before)
    torch.testing.assert_close(rank0, single.memory, rtol=1e-6, atol=1e-7)
