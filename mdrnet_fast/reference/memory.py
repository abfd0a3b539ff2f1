"""SPEC §4: the disentangled cosine memory of ShowFace (eqs. 1-5): read, and the batch-mean EMA update."""
import torch
import torch.nn.functional as F

from ._common import acc_dtype

COS_EPS = 1e-8


def cosine(q, mem):
    """cos[b,i,j] = <q[b,i], mem[i,j]> / (max(|q|,eps) * max(|mem|,eps)); q (B,n,C), mem (n,m,C)."""
    qn = q / q.norm(dim=-1, keepdim=True).clamp_min(COS_EPS)
    mn = mem / mem.norm(dim=-1, keepdim=True).clamp_min(COS_EPS)
    return torch.einsum("bic,ijc->bij", qn, mn)


def memory_read(q, mem, tau=1.0):
    """q_hat[b,i] = sum_j softmax_j(cos[b,i,:]/tau) mem[i,j]; differentiable in q only."""
    acc = acc_dtype(q.dtype)
    q32, m32 = q.to(acc), mem.detach().to(acc)
    attn = torch.softmax(cosine(q32, m32) / tau, dim=-1)
    return torch.einsum("bij,ijc->bic", attn, m32).to(q.dtype)


@torch.no_grad()
def memory_update_(mem, q, v, present, alpha):
    """mem[i,j] <- alpha*mem[i,j] + (1-alpha)*mean_{b: k[b,i]=j, present[b,i]} v[b,i]; in place.

    k = argmax_j cos (first maximum on ties). Returns k as (B,n) int64, -1 where the region is absent.
    """
    acc = acc_dtype(mem.dtype)
    m = mem.shape[1]
    k = cosine(q.to(acc), mem.to(acc)).argmax(dim=-1)                    # (B,n), ties -> lowest j
    present = present.to(torch.bool)
    chosen = F.one_hot(k, m).to(acc) * present.unsqueeze(-1).to(acc)     # (B,n,m)
    count = chosen.sum(dim=0)                                             # (n,m)
    total = torch.einsum("bij,bic->ijc", chosen, v.to(acc))
    hit = (count > 0).unsqueeze(-1)
    mean = total / count.clamp_min(1).unsqueeze(-1)
    updated = alpha * mem.to(acc) + (1 - alpha) * mean
    mem.copy_(torch.where(hit, updated, mem.to(acc)).to(mem.dtype))
    return torch.where(present, k, torch.full_like(k, -1))
