"""Shared pieces of the custom-op registration."""
import torch

from ..composite._common import out_format


def conv_out_size(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def empty_like_format(x, shape, dtype=None, like=None):
    """A new tensor of `shape`, channels_last when `like` (default x) is channels_last."""
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device,
                       memory_format=out_format(like if like is not None else x))


# ------------------------------------------------------------------ the eager fast path
#
# A plain eager call of a torch.library custom op goes through the dispatcher and torch._library's Python
# autograd wrapper; for a small op that costs more than the kernel (60 to 160 us per forward + backward on
# tiny tensors on CPU, bench/op_overhead.py; on a GPU it is most of a small op's time). Where nothing but
# eager PyTorch is looking (no torch.compile, no FakeTensor / functionalization or other dispatch mode, no
# torch-function mode, no functorch transform, no jit trace, no tensor subclass), `call` runs the op's own
# implementation, setup_context and backward as a torch.autograd.Function instead: the same Python
# functions, so the same kernels and gradients. Everything else gets the registered custom op.

_EAGER = {}  # custom op -> (its implementation, the autograd.Function's apply or None)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def register_autograd(op, backward, setup_context):
    """op.register_autograd(backward, setup_context), plus the equivalent autograd.Function for `call`."""
    op.register_autograd(backward, setup_context=setup_context)
    impl = getattr(op, "_init_fn", None)  # the decorated function (torch >= 2.4); without it, no fast path
    if impl is not None:
        def forward(ctx, *args):
            # forward(ctx, ...) rather than a setup_context staticmethod: Function.apply binds the arguments
            # of the latter with inspect.signature on every call (about 40 us)
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        fn = type(f"{impl.__name__}_eager", (torch.autograd.Function,),
                  {"forward": staticmethod(forward), "backward": staticmethod(backward)})
        _EAGER[op] = (impl, fn.apply)


def register_plain(op):
    """For `call`: an op without autograd (the backward ops) runs its implementation directly in eager."""
    impl = getattr(op, "_init_fn", None)
    if impl is not None:
        _EAGER[op] = (impl, None)


def eager_only(args) -> bool:
    """True when nothing but eager PyTorch looks at this call and every tensor in args is a plain tensor."""
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() or torch.jit.is_tracing()
            or torch._C._is_torch_function_mode_enabled() or _functorch_active()):
        return False
    return all(type(a) is torch.Tensor or type(a) is torch.nn.Parameter for a in args if isinstance(a, torch.Tensor))


def call(op, *args):
    """op(*args), through the eager fast path when nothing but eager PyTorch is looking: the autograd.Function
    when a gradient can flow, else the implementation itself (e.g. an op called inside another's backward)."""
    fast = _EAGER.get(op)
    if fast is None or not eager_only(args):
        return op(*args)
    impl, with_grad = fast
    if with_grad is not None and torch.is_grad_enabled() and any(
            a.requires_grad for a in args if isinstance(a, torch.Tensor)):
        return with_grad(*args)
    return impl(*args)
