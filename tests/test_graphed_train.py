"""GraphedTrainStep (mdrnet_fast/models/graphed_train.py): one training step, forward + loss + backward + Adam step,
replayed from a CUDA graph. Here on the CPU: its argument errors, each one line. On a GPU (`gpu` marker): three
graphed steps of a tiny MDRNet and its PatchGAN critic (the full stage of `mdrnet-fast train`) equal three eager
steps from the same start, in fp32 and under bf16 autocast."""
import contextlib
import copy

import pytest
import torch

import mdrnet_fast
from mdrnet_fast.losses import LossWeights, MDRNetLoss, terms
from mdrnet_fast.models import MDRNet, PatchGAN
from mdrnet_fast.models.graphed_train import GraphedTrainStep, match_batch

TINY = dict(image_size=32, base_channels=8, style_channels=16, memory_slots=8, parser_channels=8, gated_blocks=1,
            spade_blocks=1, spade_hidden=16)


def _one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


def _model_and_batch(device="cpu", b=2, size=32, seed=0):
    torch.manual_seed(seed)
    model = MDRNet(**TINY).to(device)
    return model, _batch(device, b, size, seed)


def _batch(device, b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(b, 1, size, size, generator=g) > 0.3).float()
    mask[:, :, 8:24, 6:20] = 0
    return {"image": (torch.rand(b, 3, size, size, generator=g) * 2 - 1).to(device), "mask": mask.to(device),
            "labels": torch.randint(0, 14, (b, size, size), generator=g).to(device)}


def _l1(model):
    return lambda b: (model(b["image"], b["mask"]).output - b["image"]).abs().mean()


def test_an_optimizer_that_counts_steps_on_the_host_is_refused():
    model, batch = _model_and_batch()
    _one_line_error(r"optimizer \(Adam\) must be created with capturable=True", GraphedTrainStep, model,
                    _l1(model), torch.optim.Adam(model.parameters()), batch)
    critic = PatchGAN(base_channels=8)
    _one_line_error(r"the optimizer of stage 1 \(AdamW\) must be created with capturable=True", GraphedTrainStep,
                    model, _l1(model), torch.optim.Adam(model.parameters(), capturable=True), batch,
                    then=[(lambda b: critic(b["image"]).mean(), torch.optim.AdamW(critic.parameters()))])
    _one_line_error("must be a torch.optim.Optimizer, got str", GraphedTrainStep, model, _l1(model), "adam", batch)


def test_cpu_tensors_are_refused():
    model, batch = _model_and_batch()
    opt = torch.optim.Adam(model.parameters(), capturable=True)
    _one_line_error(r"GraphedTrainStep needs CUDA tensors: batch\['image'\] is on cpu", GraphedTrainStep, model,
                    _l1(model), opt, batch)


def test_bad_batches_and_options_are_refused():
    model, batch = _model_and_batch()
    opt = torch.optim.Adam(model.parameters(), capturable=True)
    _one_line_error("batch must be a non-empty dict of tensors, got tuple", GraphedTrainStep, model, _l1(model), opt,
                    (batch["image"], batch["mask"]))
    _one_line_error(r"batch\['size'\] must be a tensor, got int", GraphedTrainStep, model, _l1(model), opt,
                    dict(batch, size=32))
    _one_line_error("amp_dtype must be torch.bfloat16 or None, got torch.float16", GraphedTrainStep, model,
                    _l1(model), opt, batch, amp_dtype=torch.float16)
    _one_line_error("model must be an nn.Module or a sequence of them", GraphedTrainStep, [], _l1(model), opt, batch)
    _one_line_error("the loss_fn of stage 0 is not callable", GraphedTrainStep, model, None, opt, batch)


def test_a_batch_unlike_the_captured_one_is_refused():
    static = _batch("cpu")
    match_batch(static, _batch("cpu", seed=1))  # other values, same shapes: fine
    _one_line_error(r"image must be \(2, 3, 32, 32\) torch.float32 on cpu as at capture, got \(1, 3, 32, 32\)",
                    match_batch, static, _batch("cpu", b=1))
    _one_line_error(r"mask must be \(2, 1, 32, 32\) torch.float32 on cpu as at capture, got \(2, 1, 32, 32\) "
                    "torch.float64", match_batch, static, dict(static, mask=static["mask"].double()))
    _one_line_error(r"the batch must have the keys \['image', 'labels', 'mask'\] as at capture, got "
                    r"\['image', 'mask'\]", match_batch, static, {k: static[k] for k in ("image", "mask")})
    _one_line_error("the batch must be a dict of tensors, got list", match_batch, static, [static["image"]])


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: capture runs the step's Python once (a real capture only
    records its kernels), replay runs it again and writes its losses into the captured ones, as a real replay
    rewrites the graph's own tensors."""

    step = None

    def replay(self):
        for old, new in zip(self.step.losses, self.step._run()):
            old.copy_(new)


@pytest.mark.parametrize("opt_name", ["sgd-momentum", "adam"])
def test_capture_bookkeeping_on_the_cpu_with_faked_cuda_graphs(monkeypatch, opt_name):
    """What the GPU tests check, with torch.cuda's streams and graphs faked: the warm-up (and the faked capture)
    are undone, optimizer state included, so n replays are n eager steps from the same weights."""
    from mdrnet_fast.models import graphed_train

    monkeypatch.setattr(graphed_train, "_is_cuda", lambda t: True)
    monkeypatch.setattr(graphed_train, "_optimizer_check", lambda opt, where: None)  # CPU Adam is not capturable
    stream = type("FakeStream", (), {"wait_stream": lambda self, other: None})()
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
    torch.manual_seed(0)
    model, critic = MDRNet(**TINY), PatchGAN(base_channels=8)
    start = copy.deepcopy(_state(model, critic))
    batches = [_batch("cpu", seed=s) for s in (1, 2)]
    make = {"sgd-momentum": lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
            "adam": lambda m: torch.optim.Adam(m.parameters(), lr=LR, eps=EPS)}[opt_name]
    runs = {}
    for how in ("eager", "graph"):
        g, d = copy.deepcopy(model).train(), copy.deepcopy(critic).train()
        stages = [(fn, make(m)) for (fn, _), m in zip(_full_stage(g, d), (g, d))]
        if how == "eager":
            losses = [_eager_step(stages, b, None) for b in batches]
        else:
            step = GraphedTrainStep((g, d), *stages[0], _batch("cpu", seed=9), then=stages[1:], warmup=2)
            _FakeGraph.step = step
            assert all(torch.equal(v, start[k]) for k, v in _state(g, d).items())
            losses = []
            for b in batches:
                loss = step(b)
                assert torch.equal(loss, step.losses[0]) and loss is not step.losses[0]
                losses.append([t.clone() for t in step.losses])
        runs[how] = (torch.stack([torch.stack(ls) for ls in losses]), _state(g, d))
    torch.testing.assert_close(runs["graph"][0], runs["eager"][0], rtol=1e-6, atol=1e-7)
    for k, v in runs["eager"][1].items():
        torch.testing.assert_close(runs["graph"][1][k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.equal(runs["graph"][1]["g.memory.memory"], start["g.memory.memory"])


# ---- GPU: the graphed step is the eager step -------------------------------------------------------------------

_GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
LR, EPS = 1e-3, 1e-3  # eps >> rounding-level gradients: Adam would turn those into full lr steps of either sign


def _full_stage(model, critic):
    """The two stages of `mdrnet-fast train --stage full` (as bench/test_bench_model.py's train step): the
    generator's loss with the PatchGAN term and the parser's supervision, then the critic's loss."""
    criterion = MDRNetLoss(LossWeights(), vgg=None, recon=None)
    keep = {}

    def generator(b):
        out = keep["out"] = model(b["image"], b["mask"])
        loss, _ = criterion.generator(out, b["image"], b["mask"], b["labels"], model.parser, critic)
        return loss + terms.semantic(model.parser(b["image"]), b["labels"])

    def discriminator(b):
        return criterion.critic(critic, b["image"], keep["out"].output)

    opts = [torch.optim.Adam(m.parameters(), lr=LR, eps=EPS, betas=(0.9, 0.99), capturable=True)
            for m in (model, critic)]
    return [(generator, opts[0]), (discriminator, opts[1])]


def _eager_step(stages, batch, amp_dtype):
    losses = []
    for fn, opt in stages:
        with torch.autocast("cuda", amp_dtype) if amp_dtype is not None else contextlib.nullcontext():
            loss = fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


def _state(model, critic):
    return {**{f"g.{k}": v for k, v in model.state_dict().items()},
            **{f"d.{k}": v for k, v in critic.state_dict().items()}}


@pytest.mark.parametrize("backend,amp_dtype,tol", [
    pytest.param("reference", None, 1e-4, id="reference-fp32", marks=_GPU),
    pytest.param("auto", None, 1e-4, id="auto-fp32", marks=_GPU),
    pytest.param("auto", torch.bfloat16, 2e-2, id="auto-bf16", marks=_GPU)])
def test_three_graphed_steps_equal_three_eager_steps(backend, amp_dtype, tol):
    torch.manual_seed(0)
    model, critic = MDRNet(**TINY).cuda(), PatchGAN(base_channels=8).cuda()
    start = copy.deepcopy(_state(model, critic))
    batches = [_batch("cuda", seed=s) for s in (1, 2, 3)]
    runs = {}
    with mdrnet_fast.use_backend(backend):
        for how in ("eager", "graph"):
            g, d = copy.deepcopy(model).train(), copy.deepcopy(critic).train()
            stages = _full_stage(g, d)
            if how == "eager":
                losses = [_eager_step(stages, b, amp_dtype) for b in batches]
            else:
                step = GraphedTrainStep((g, d), *stages[0], _batch("cuda", seed=9), then=stages[1:],
                                        amp_dtype=amp_dtype)
                # the warm-up steps are undone: the graph starts from the weights it was given
                for k, v in _state(g, d).items():
                    torch.testing.assert_close(v, start[k], rtol=0, atol=0, msg=k)
                losses = []
                for b in batches:
                    step(b)
                    losses.append([t.clone() for t in step.losses])
            torch.cuda.synchronize()
            runs[how] = (torch.stack([torch.stack(ls).float() for ls in losses]), _state(g, d))
    (eager_losses, eager_state), (graph_losses, graph_state) = runs["eager"], runs["graph"]
    torch.testing.assert_close(graph_losses, eager_losses, rtol=tol, atol=tol * 1e-2)
    moved = 0
    for k, v in eager_state.items():
        if v.is_floating_point():
            torch.testing.assert_close(graph_state[k], v, rtol=tol * 10, atol=tol * 0.1, msg=k)
            moved += int(not torch.equal(v, start[k]))
        else:
            assert torch.equal(graph_state[k], v), k  # batch-norm step counts
    assert moved > len(eager_state) // 2  # the steps did train: most weights and buffers changed
    assert not torch.equal(graph_state["g.memory.memory"], start["g.memory.memory"])  # the memory was updated


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replays_refuse_another_shape_and_keep_outputs_of_the_last_step():
    model, batch = _model_and_batch("cuda")
    keep = {}

    def loss_fn(b):
        out = keep["out"] = model(b["image"], b["mask"])
        return (out.output - b["image"]).abs().mean()

    step = GraphedTrainStep(model, loss_fn, torch.optim.Adam(model.parameters(), capturable=True), batch)
    step(_batch("cuda", seed=4))
    first = keep["out"].output.clone()
    loss = step(_batch("cuda", seed=5))
    assert loss.shape == () and torch.isfinite(loss)
    assert not torch.equal(keep["out"].output, first)  # the kept output is the graph's, rewritten by each replay
    with pytest.raises(ValueError, match=r"image must be \(2, 3, 32, 32\) torch.float32 on cuda:0 as at capture"):
        step(_batch("cuda", b=1))
