"""The MDRNet model gives the same numbers whichever backend runs it."""
import copy

import pytest
import torch

import mdrnet_fast
from mdrnet_fast.models import MDRNet, PatchGAN

from _util import fast_backends, rel_err

TINY = dict(image_size=32, base_channels=8, style_channels=16, memory_slots=8, parser_channels=8, gated_blocks=1,
            spade_blocks=1, spade_hidden=16)
MODEL_TOL = 1e-4  # fp32 through a deep network: per-op SPEC bounds (1e-5) compound


def assert_grads_close(model, ref_model):
    """Each gradient within MODEL_TOL of its reference, relative to its own scale, floored at 1e-3 of the
    largest gradient (a mathematically zero gradient, e.g. of a bias before a norm, is rounding noise)."""
    grads = [(n, p.grad, pr.grad) for (n, p), (_, pr) in zip(model.named_parameters(), ref_model.named_parameters())
             if pr.grad is not None]
    top = max(gr.abs().max().item() for _, _, gr in grads)
    for name, g, gr in grads:
        scale = max(gr.abs().max().item(), 1e-3 * top)
        assert (g - gr).abs().max().item() <= MODEL_TOL * scale, name


def _inputs(b=2, size=32):
    image = torch.rand(b, 3, size, size) * 2 - 1
    mask = torch.ones(b, 1, size, size)
    mask[:, :, 8:24, 6:20] = 0  # a hole
    mask[1, :, 2:6, 20:30] = 0
    return image, mask


def _loss(out, image):
    return (out.output - image).abs().mean() + (out.coarse - image).abs().mean() + out.q_hat.square().mean()


def test_forward_shapes_and_composite():
    torch.manual_seed(0)
    model = MDRNet(**TINY)
    image, mask = _inputs()
    out = model(image, mask)
    assert out.output.shape == out.coarse.shape == out.refined.shape == image.shape
    assert out.segmentation.shape == (2, 14, 32, 32) and out.labels.shape == (2, 32, 32)
    known = mask.expand_as(image) == 1
    assert torch.equal(out.output[known], image[known])
    assert torch.isfinite(out.output).all()


def test_given_labels_skip_the_parser():
    torch.manual_seed(0)
    model = MDRNet(**TINY)
    image, mask = _inputs()
    labels = torch.randint(0, 14, (2, 32, 32))
    out = model(image, mask, labels)
    assert out.segmentation is None and torch.equal(out.labels, labels)


def test_segmentation_and_parser_output_are_checked_once_at_the_entry():
    """The region ops inside skip their label check (a host sync each on a GPU): the model checks here."""
    model = MDRNet(**TINY)
    image, mask = _inputs()
    with pytest.raises(ValueError, match=r"seg labels must lie in \[0, num_classes=14\)"):
        model(image, mask, torch.randint(0, 15, (2, 32, 32)))
    with pytest.raises(ValueError, match=r"segmentation maps must be \(B,n=14,H,W\)"):
        model(image, mask, torch.rand(2, 13, 32, 32))
    model.parser = torch.nn.Conv2d(3, 12, 1)
    with pytest.raises(ValueError, match=r"the parser must return \(B,n=14,H,W\) logits"):
        model(image, mask)


@pytest.mark.parametrize("backend", fast_backends("partial_conv2d"))
def test_outputs_and_gradients_match_reference(backend):
    torch.manual_seed(0)
    ref_model = MDRNet(**TINY).train()
    fast_model = copy.deepcopy(ref_model)
    image, mask = _inputs()
    with mdrnet_fast.use_backend("reference"):
        ref = ref_model(image, mask)
        _loss(ref, image).backward()
    with mdrnet_fast.use_backend(backend):
        out = fast_model(image, mask)
        _loss(out, image).backward()
    assert torch.equal(out.labels, ref.labels)
    for name in ("output", "coarse", "refined", "q", "v", "q_hat"):
        assert rel_err(getattr(out, name), getattr(ref, name)) < MODEL_TOL, name
    assert torch.allclose(fast_model.memory.memory, ref_model.memory.memory, rtol=1e-5, atol=1e-6)
    assert_grads_close(fast_model, ref_model)


@pytest.mark.slow
@pytest.mark.parametrize("backend", fast_backends("partial_conv2d"))
def test_three_optimizer_steps_match_reference(backend):
    torch.manual_seed(0)
    models = {"reference": MDRNet(**TINY).train()}
    models[backend] = copy.deepcopy(models["reference"])
    batches = [_inputs() for _ in range(3)]
    for name, model in models.items():
        # SGD: updates linear in the gradients. Adam divides by sqrt(v), turning a rounding-level gradient
        # (e.g. of the coarse net's deepest layers, whose batch-norm sees 2x2 maps) into a full lr step.
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        with mdrnet_fast.use_backend(name):
            for image, mask in batches:
                opt.zero_grad()
                _loss(model(image, mask), image).backward()
                opt.step()
    ref, fast = models["reference"], models[backend]
    for (name, p), (_, pr) in zip(fast.named_parameters(), ref.named_parameters()):
        assert rel_err(p.detach(), pr.detach()) < MODEL_TOL, name
    assert rel_err(fast.memory.memory, ref.memory.memory) < MODEL_TOL


def test_patchgan_gives_a_logit_map():
    assert PatchGAN(base_channels=8)(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="image_size"):
        MDRNet(image_size=40, **{k: v for k, v in TINY.items() if k != "image_size"})
    model = MDRNet(**TINY)
    with pytest.raises(ValueError, match="mask"):
        model(torch.rand(2, 3, 32, 32), torch.ones(2, 3, 32, 32))


def test_graphed_inference_needs_cuda_tensors():
    from mdrnet_fast.models import GraphedInference

    image, mask = _inputs()
    with pytest.raises(ValueError, match="GraphedInference needs CUDA tensors: image is cpu"):
        GraphedInference(MDRNet(**TINY), image, mask)


_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@_GPU
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_graphed_inference_replays_the_eager_forward(backend):
    from mdrnet_fast.models import GraphedInference

    torch.manual_seed(0)
    model = MDRNet(**TINY).cuda().eval()
    image, mask = (t.cuda() for t in _inputs())
    with mdrnet_fast.use_backend(backend):
        graphed = GraphedInference(model, image, mask)
        for seed in (1, 2):  # new values through the same graph
            torch.manual_seed(seed)
            image2 = torch.rand_like(image) * 2 - 1
            mask2 = (torch.rand_like(mask) > 0.4).float()
            got = graphed(image2, mask2)
            with torch.no_grad():
                want = model(image2, mask2)
            torch.testing.assert_close(got.output, want.output, rtol=1e-4, atol=1e-5)
            assert torch.equal(got.labels, want.labels)
    with pytest.raises(ValueError, match=r"image must be \(2, 3, 32, 32\)"):
        graphed(image[:1], mask[:1])


@pytest.mark.parametrize("backend", ["auto", "reference", "cpu"])
def test_model_builds_and_runs_on_meta_then_materialises(backend, caplog):
    """Built on the meta device (shapes only, no memory) and run there under any backend setting, then
    materialised with real weights: what large-model tooling does."""
    config = dict(image_size=64, base_channels=8, style_channels=16, memory_slots=4, parser_channels=4,
                  gated_blocks=1, spade_blocks=1, spade_hidden=8)
    with torch.device("meta"):
        model = MDRNet(**config).eval()
    image, mask = torch.empty(2, 3, 64, 96, device="meta"), torch.empty(2, 1, 64, 96, device="meta")
    labels = torch.empty(2, 64, 96, dtype=torch.long, device="meta")
    with mdrnet_fast.use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(image, mask)
        guided = model(image, mask, segmentation=labels)
    assert out.output.shape == guided.output.shape == (2, 3, 64, 96) and out.output.device.type == "meta"
    assert "no fast kernel" not in caplog.text
    model.to_empty(device="cpu").load_state_dict(MDRNet(**config).state_dict())
    assert model(torch.rand(1, 3, 64, 64) * 2 - 1, torch.ones(1, 1, 64, 64)).output.isfinite().all()
