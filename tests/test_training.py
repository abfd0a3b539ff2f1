"""The training library (mdrnet_fast.training) and the train options it brings: --precision (and the deprecated
--amp), --compile, --checkpoint-activations, and the per-step loss log."""
import copy
import functools
import json

import pytest
import torch

import mdrnet_fast
from mdrnet_fast.cli import main
from mdrnet_fast.commands import common
from mdrnet_fast.models import MDRNet
from mdrnet_fast.training import TrainConfig, build, resolve_training_precision, train
from mdrnet_fast.training import precision as precision_mod

from _util import fast_backends

TINY = ["--image-size", "32", "--batch-size", "2", "--synthetic-size", "16", "--no-progress", "--threads", "1"]
TINY_CONFIG = dict(image_size=32, batch_size=2, synthetic_size=16, no_progress=True, threads=1)


def _run(capsys, out, *argv):
    """(exit code, stdout, stderr) of `mdrnet-fast train --out OUT ARGV` on the tiny config."""
    try:
        rc = main(["train", "--out", str(out), "--sample-every", "100", *TINY, *map(str, argv)])
    except SystemExit as exc:
        rc = exc.code
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _losses(out):
    return [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]


def _args(out):
    return torch.load(out / "last.ckpt", weights_only=False)["args"]


# --------------------------------------------------------------------------- the library

def test_the_command_runs_the_library(tmp_path):
    from mdrnet_fast.commands import train as command

    assert command.build is build  # other modules import it from the command
    assert train(TrainConfig(out=str(tmp_path), steps=1, stage="coarse", **TINY_CONFIG)) == 1
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["stage"] == "coarse" and ckpt["step"] == 1 and ckpt["args"]["precision"] == "fp32"


def test_loss_log_has_a_line_per_step_and_resume_drops_steps_it_trains_again(tmp_path, capsys):
    assert _run(capsys, tmp_path, "--steps", 2, "--ckpt-every", 1)[0] == 0
    lines = _losses(tmp_path)
    assert [line["step"] for line in lines] == [1, 2]
    assert {"loss", "rec", "coarse", "critic", "seconds"} <= set(lines[0])
    assert all(torch.isfinite(torch.tensor(v)) for line in lines for v in line.values())
    # a crash after step 5 without a checkpoint: its lines are of steps the resumed run trains again
    with open(tmp_path / "losses.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + '{"step": 6, "lo')
    assert _run(capsys, tmp_path, "--steps", 3, "--resume")[0] == 0
    assert [line["step"] for line in _losses(tmp_path)] == [1, 2, 3]
    assert _losses(tmp_path)[:2] == lines


# --------------------------------------------------------------------------- precision

def test_precision_resolution(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_training_precision("fp32", cpu) == (None, "asked for")
    assert resolve_training_precision("bf16", cpu)[0] == torch.bfloat16
    assert resolve_training_precision("fp16", cuda)[0] == torch.float16
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_training_precision("fp16", cpu)
    with pytest.raises(ValueError, match="auto, fp32, bf16, fp16"):
        resolve_training_precision("fp8", cpu)
    for native, dtype in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr("mdrnet_fast.inpainting.precision.cpu_has_native_bf16", lambda: native)
        monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: native)
        taken, why = resolve_training_precision("auto", cpu)
        assert taken == dtype and why.startswith("auto: this CPU")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: native)
        assert resolve_training_precision("auto", cuda)[0] == dtype


def test_bf16_training_records_its_precision(tmp_path, capsys):
    rc, out, _ = _run(capsys, tmp_path, "--steps", 1, "--precision", "bf16")
    assert rc == 0 and "precision bf16 (asked for)" in out
    assert _args(tmp_path)["precision"] == "bf16"
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # fp32 master weights
    assert all(torch.isfinite(torch.tensor(v)) for v in _losses(tmp_path)[0].values())


def test_auto_precision_says_what_it_took_and_why(tmp_path, capsys):
    rc, out, _ = _run(capsys, tmp_path, "--steps", 1, "--precision", "auto", "--stage", "coarse")
    taken = "bf16" if precision_mod.cpu_has_native_bf16() else "fp32"
    assert rc == 0 and f"precision {taken} (auto: this CPU" in out
    assert _args(tmp_path)["precision"] == taken and _args(tmp_path)["precision_asked"] == "auto"


def test_fp16_on_cpu_is_refused_in_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed with a GPU")
    for argv in (["--precision", "fp16"], ["--amp", "fp16"]):
        rc, out, err = _run(capsys, tmp_path / "run", "--steps", 1, *argv)
        assert rc == 2 and out == "" and len(err.splitlines()) == 1
        assert "mdrnet-fast train: error: --precision fp16 needs a CUDA GPU" in err
    assert not (tmp_path / "run").exists()


def test_amp_is_a_deprecated_alias(tmp_path, capsys):
    rc, out, err = _run(capsys, tmp_path / "a", "--steps", 1, "--amp", "off", "--stage", "coarse")
    assert rc == 0 and "--amp is deprecated, use --precision fp32" in err and "precision fp32" in out
    assert _args(tmp_path / "a")["precision"] == "fp32"
    rc, _, err = _run(capsys, tmp_path / "b", "--steps", 1, "--amp", "bf16", "--precision", "fp32")
    assert rc == 2 and len(err.splitlines()) == 1 and "--amp bf16 (deprecated) and --precision fp32" in err
    assert not (tmp_path / "b").exists()


def test_an_old_checkpoint_resumes_in_another_precision(tmp_path, capsys):
    """Checkpoints of before --precision hold args with "amp" and no critic scaler; fp32 ones a disabled (empty)
    scaler state. They resume, in bf16 too."""
    assert _run(capsys, tmp_path, "--steps", 1)[0] == 0
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    del ckpt["critic_scaler"]
    ckpt["args"] = {k: v for k, v in ckpt["args"].items() if not k.startswith("precision")} | {"amp": "off"}
    torch.save(ckpt, tmp_path / "last.ckpt")
    rc, out, _ = _run(capsys, tmp_path, "--steps", 2, "--resume", "--precision", "bf16")
    assert rc == 0 and "precision bf16" in out
    resumed = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert resumed["step"] == 2 and resumed["args"]["precision"] == "bf16"


# --------------------------------------------------------------------------- activation checkpointing

def _tiny_model():
    torch.manual_seed(0)
    return MDRNet(**dict(common.PRESETS["cpu-demo"], image_size=32)).train()


def test_checkpoint_activations_is_off_by_default_and_no_state():
    model = _tiny_model()
    assert not model.checkpoint_activations
    assert not model.coarse.checkpoint_activations and not model.refine.checkpoint_activations
    keys = set(model.state_dict())
    model.checkpoint_activations = True
    assert model.coarse.checkpoint_activations and model.refine.checkpoint_activations
    assert set(model.state_dict()) == keys  # old checkpoints load, new ones load without it


@pytest.mark.parametrize("backend", ["reference", *fast_backends("partial_conv2d")[:1]])
def test_checkpoint_activations_gives_the_same_gradients_and_statistics(backend):
    """The same loss, gradients, and batch-norm running statistics (updated once, not again by the
    recomputation), bit for bit in fp32."""
    mdrnet_fast.set_backend(backend)
    plain = _tiny_model()
    recomputed = copy.deepcopy(plain)
    recomputed.checkpoint_activations = True
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    mask = (torch.rand(2, 1, 32, 32, generator=gen) > 0.4).float()
    losses = []
    for model in (plain, recomputed):
        out = model(image, mask)
        loss = (out.output - image).abs().mean() + out.coarse.square().mean()
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(*losses)
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(plain.named_buffers(), recomputed.buffers()):
        assert torch.equal(a, b), name


def test_train_checkpoint_activations_matches_plain_training(tmp_path, capsys):
    assert _run(capsys, tmp_path / "a", "--steps", 1)[0] == 0
    assert _run(capsys, tmp_path / "b", "--steps", 1, "--checkpoint-activations")[0] == 0
    a, b = (torch.load(tmp_path / r / "last.ckpt", weights_only=False)["model"] for r in "ab")
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


# --------------------------------------------------------------------------- torch.compile

def _compile_vs_eager(tmp_path, stage):
    losses = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        torch._dynamo.reset()
        out = tmp_path / name
        train(TrainConfig(out=str(out), steps=2, stage=stage, compile=compiled, **TINY_CONFIG))
        losses[name] = torch.tensor([[v for k, v in line.items() if k not in ("step", "seconds")]
                                     for line in _losses(out)])
    torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_full_stage_matches_eager_with_no_graph_break(tmp_path, monkeypatch):
    """The whole full stage, every op of it, through dynamo and AOT autograd (the aot_eager backend: inductor's
    code generation of the full stage alone takes minutes, and is tested on the coarse stage below)."""
    from mdrnet_fast.training import Trainer

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    _compile_vs_eager(tmp_path, "full")
    trainer = Trainer(TrainConfig(out=str(tmp_path / "x"), **TINY_CONFIG))
    batch = next(trainer.batches)
    fmt = torch.channels_last
    args = (batch["image"].contiguous(memory_format=fmt), batch["mask"].contiguous(memory_format=fmt),
            batch["labels"])
    assert torch._dynamo.explain(trainer._generator_loss_eager)(*args).graph_break_count == 0
    assert torch._dynamo.explain(trainer._critic_loss_eager)(args[0], args[0]).graph_break_count == 0


@pytest.mark.slow
def test_compiled_coarse_stage_matches_eager(tmp_path):
    """`train --compile` with torch.compile's default (inductor) compiler."""
    _compile_vs_eager(tmp_path, "coarse")


# --------------------------------------------------------------------------- the bench scripts, on small cases

def _bench(script, *argv):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), *sys.path]))
    res = subprocess.run([sys.executable, str(root / "bench" / script), *map(str, argv)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_train_memory_script(tmp_path):
    out = _bench("train_memory.py", "--sizes", 32, "--backends", "reference", "--threads", 1,
                 "--json", tmp_path / "m.json")
    rows = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert [r["checkpoint_activations"] for r in rows] == [False, True]
    assert all(r["peak_rss_mib"] > r["rss_before_step_mib"] > 0 for r in rows)
    assert rows[0]["loss"] == rows[1]["loss"]  # the same step, recomputed or not
    assert out.count("| 32 | reference |") == 2


@pytest.mark.slow
def test_precision_losses_script(tmp_path):
    out = _bench("precision_losses.py", "--steps", 2, "--every", 1, "--threads", 1, "--json", tmp_path / "p.json",
                 "--", *TINY)
    data = json.loads((tmp_path / "p.json").read_text())
    assert [row["step"] for row in data["table"]] == [1, 2]
    assert set(data["runs"]) == {"fp32", "bf16"} and "precision bf16" in data["runs"]["bf16"]["said"]
    assert "| 2 |" in out


# --------------------------------------------------------------------------- CUDA graphs

def test_cuda_graphs_refusals_are_one_line(tmp_path, capsys):
    cases = [(["--cuda-graphs"], "needs a CUDA GPU")] if not torch.cuda.is_available() else [
        (["--cuda-graphs", "--compile"], "does not combine with --compile"),
        (["--cuda-graphs", "--precision", "fp16"], "does not take fp16")]
    for argv, message in cases:
        rc, out, err = _run(capsys, tmp_path / "run", "--steps", 1, *argv)
        assert rc == 2 and len(err.splitlines()) == 1 and f"--cuda-graphs {message}" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_steps_follow_eager_training(tmp_path, capsys, precision):
    """--cuda-graphs: 3 steps replayed from one graph give the eager run's losses (Adam capturable in both)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    runs = {}
    for name, extra in (("eager", []), ("graphs", ["--cuda-graphs"])):
        rc, _, err = _run(capsys, tmp_path / name, "--steps", 3, "--precision", precision, *extra)
        assert rc == 0, err
        runs[name] = _losses(tmp_path / name)
    tol = 1e-4 if precision == "fp32" else 2e-2
    for eager, graphed in zip(runs["eager"], runs["graphs"]):
        assert graphed["loss"] == pytest.approx(eager["loss"], rel=tol, abs=tol)
