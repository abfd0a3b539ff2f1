"""DisentangledMemory: the DMM of ShowFace (§3.2), n semantic blocks of m slots."""
import torch
import torch.distributed as dist
import torch.nn as nn

from .. import ops


def _all_gather_cat(t):
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


class DisentangledMemory(nn.Module):
    """Memory `memory` (n, m, C) is a buffer (in the state_dict, no gradient).

    forward(q, v=None, present=None): in training mode, with v and present given, first updates the
    memory from v (SPEC §4, batch-mean EMA with decay alpha), then reads q_hat (B,n,C) with soft scores
    softmax(cos/tau). alpha and the init are not given by the paper: alpha=0.9, slots ~ N(0, 1/C).
    """

    def __init__(self, channels, num_classes=14, slots=128, alpha=0.9, tau=1.0):
        super().__init__()
        self.alpha, self.tau = alpha, tau
        self.register_buffer("memory", torch.randn(num_classes, slots, channels) / channels ** 0.5)

    @torch.no_grad()
    def update(self, q, v, present):
        """Applies the update and returns the chosen slots (B,n), -1 where absent.

        Under torch.distributed (initialised, world size > 1) q, v and present are first gathered from
        every rank, so each replica applies the same update to the same memory (SPEC §4); the returned
        slots are then those of the gathered batch, in rank order. Ranks must pass equal batch sizes.
        """
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            q, v, present = (_all_gather_cat(t) for t in (q.detach(), v.detach(), present.to(torch.uint8)))
        return ops.memory_update_(self.memory, q.detach(), v.detach(), present.bool(), self.alpha)

    def forward(self, q, v=None, present=None):
        if self.training and v is not None:
            if present is None:
                raise ValueError("present (B,n) bool must be given with v to update the memory")
            self.update(q, v, present)
        return ops.memory_read(q, self.memory, self.tau)

    def extra_repr(self):
        n, m, c = self.memory.shape
        return f"channels={c}, num_classes={n}, slots={m}, alpha={self.alpha}, tau={self.tau}"
