"""The model commands: train (stages, checkpoints, exact resume), inpaint and eval."""
import numpy as np
import pytest
import torch
from PIL import Image

from mdrnet_fast.cli import main

TINY = ["--image-size", "32", "--batch-size", "2", "--synthetic-size", "16", "--no-progress", "--threads", "1"]


def _train(out, steps, *extra):
    assert main(["train", "--steps", str(steps), "--out", str(out), "--ckpt-every", "2", "--sample-every", "2",
                 *TINY, *extra]) == 0
    return torch.load(out / "last.ckpt", weights_only=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    _train(out, 2)
    return out


def test_train_writes_checkpoint_and_samples(trained):
    ckpt = torch.load(trained / "last.ckpt", weights_only=False)
    assert ckpt["stage"] == "full" and ckpt["step"] == 2 and "memory.memory" in ckpt["model"]
    assert {"optimizer", "critic", "critic_optimizer", "rng", "config"} <= set(ckpt)
    assert (trained / "samples" / "step0000002.png").is_file()
    assert not list(trained.glob(".*tmp*"))  # atomic write left no temporary file


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path):
    straight = _train(tmp_path / "a", 4)
    _train(tmp_path / "b", 2)
    resumed = _train(tmp_path / "b", 4, "--resume")
    assert resumed["step"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


@pytest.mark.slow
def test_coarse_and_recon_stages_feed_the_full_stage(tmp_path, capsys):
    coarse = _train(tmp_path / "coarse", 2, "--stage", "coarse")
    recon = _train(tmp_path / "recon", 2, "--stage", "recon")
    assert coarse["stage"] == "coarse" and recon["stage"] == "recon"
    full = _train(tmp_path / "full", 2, "--coarse-checkpoint", str(tmp_path / "coarse" / "last.ckpt"),
                  "--recon-checkpoint", str(tmp_path / "recon" / "last.ckpt"))
    assert full["stage"] == "full"
    # a coarse checkpoint cannot resume the full stage
    assert main(["train", "--steps", "4", "--out", str(tmp_path / "coarse"), "--resume", *TINY]) == 2
    assert "pass --stage coarse" in capsys.readouterr().err


def test_inpaint_files_and_folders(trained, tmp_path):
    img = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    mask = np.full((40, 50), 255, np.uint8)
    mask[10:30, 15:35] = 0
    (tmp_path / "in").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(img).save(tmp_path / "in" / "face.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "face.png")
    ckpt = str(trained / "last.ckpt")
    assert main(["inpaint", "--checkpoint", ckpt, "--image", str(tmp_path / "in" / "face.png"),
                 "--mask", str(tmp_path / "masks" / "face.png"), "--out", str(tmp_path / "one.png")]) == 0
    out = np.asarray(Image.open(tmp_path / "one.png"))
    assert out.shape == img.shape  # the image's own size, not the checkpoint's 32x32
    assert (out[mask > 0] == img[mask > 0]).all() and (out[mask == 0] != img[mask == 0]).any()
    assert main(["inpaint", "--checkpoint", ckpt, "--image", str(tmp_path / "in"), "--mask", str(tmp_path / "masks"),
                 "--out", str(tmp_path / "outs")]) == 0
    assert (tmp_path / "outs" / "face.png").is_file()


def test_eval_reports_every_ratio_bin(trained, capsys):
    assert main(["eval", "--checkpoint", str(trained / "last.ckpt"), "--limit", "2", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert all(b in out for b in ("1-20%", "20-40%", "40-60%")) and "PSNR" in out and "SSIM" in out


def test_memory_format_defaults_to_channels_last_on_cpu(tmp_path, monkeypatch):
    """On CPU the commands run model and batches in channels_last unless --no-channels-last; a checkpoint of
    either layout holds the same values (a state_dict does not depend on the layout)."""
    from mdrnet_fast.commands import common, train

    assert common.default_memory_format(torch.device("cpu")) == torch.channels_last
    assert common.default_memory_format(torch.device("cuda")) == torch.contiguous_format
    seen = []
    build = train.build

    def spy(*args, **kwargs):
        model, critic = build(*args, **kwargs)
        seen.append(model)
        return model, critic

    monkeypatch.setattr(train, "build", spy)
    cl = _train(tmp_path / "cl", 1)
    nchw = _train(tmp_path / "nchw", 1, "--no-channels-last")
    convs = [[m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
             for model in seen]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs[0])
    assert all(w.is_contiguous() for w in convs[1])
    # Adam's first step moves every weight by about lr (2e-4) whatever its gradient's size, so a gradient
    # entry near 0, summed in another order in the other layout, can move its weight by a good part of a step
    for key, value in cl["model"].items():
        torch.testing.assert_close(value, nchw["model"][key], rtol=1e-4, atol=5e-5, msg=key)


def test_eval_compare_paper_sets_ours_beside_table1(trained, capsys):
    assert main(["eval", "--checkpoint", str(trained / "last.ckpt"), "--limit", "2", "--batch-size", "2",
                 "--compare-paper", "ffhq", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "ShowFace Table 1, FFHQ" in out and "precision fp32 -> fp32" in out
    showface = next(line for line in out.splitlines() if line.split()[:1] == ["ShowFace"] and "Table" not in line)
    assert showface.split()[1:4] == ["0.470", "1.395", "3.068"]  # the paper's L1 (%) per bin, FFHQ
    ours = next(line for line in out.splitlines() if line.startswith("this checkpoint"))
    assert ours.split()[6:9] == ["n/a"] * 3  # FID is off without --inception-weights


def test_table1_as_printed_in_the_paper():
    from mdrnet_fast.paper import compare, table1

    celeba = table1("celeba-hq")
    assert list(celeba) == ["PConv", "DeepFillv2", "PIC", "CTSDG", "DSI", "ICT", "ShowFace"]
    assert celeba["ShowFace"]["40-60%"] == {"l1_percent": 2.937, "fid": 12.086, "psnr": 24.177, "ssim": 0.800}
    assert table1("ffhq")["ICT"]["1-20%"]["fid"] == 3.244
    for method in celeba.values():  # ShowFace's row is the best of each column, as the paper says for CelebA-HQ
        for b, row in method.items():
            best = celeba["ShowFace"][b]
            assert best["l1_percent"] <= row["l1_percent"] and best["psnr"] >= row["psnr"]
    with pytest.raises(ValueError, match="celeba-hq, ffhq"):
        compare({}, "places2")
