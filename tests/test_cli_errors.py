"""Every `mdrnet-fast` command fails in one line: exit 2 for bad input, 1 for other failures, 130 for ^C;
--debug gives the traceback instead."""
import os
import subprocess
import sys

import pytest
import torch

from mdrnet_fast.cli import main
from mdrnet_fast.commands import common, train
from mdrnet_fast.commands.common import CommandError

TINY = ["--image-size", "32", "--batch-size", "2", "--synthetic-size", "16", "--no-progress", "--threads", "1"]


def _main(capsys, *argv):
    """(exit code, stdout, stderr) of `mdrnet-fast ARGV`, argparse's own exits included."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(text, *names):
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1, text
    for name in names:
        assert name in lines[0]
    return lines[0]


def _files(folder):
    """Every file under `folder` with its bytes and modification time: what a command must leave alone."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run trained to its --steps (2)."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--steps", "2", "--out", str(out), "--ckpt-every", "2", "--sample-every", "2", *TINY]) == 0
    return out


@pytest.fixture
def small_checkpoint(tmp_path):
    path = tmp_path / "small.ckpt"
    torch.save({"stage": "full", "step": 1, "config": {"image_size": 32},
                "model": torch.nn.Conv2d(3, 8, 3).state_dict()}, path)
    return path


# --------------------------------------------------------------------------- backend choice

def test_unknown_backend_is_refused_in_one_line(tmp_path, capsys):
    rc, _, err = _main(capsys, "train", "--backend", "gpu", "--out", tmp_path / "run", *TINY)
    assert rc == 2
    _one_line(err, "mdrnet-fast train: error:", "--backend", "'gpu'", "reference", "triton", "cuda")
    assert not (tmp_path / "run").exists()
    rc, out, _ = _main(capsys, "train", "--help")
    assert rc == 0 and "auto, reference, cpu, triton, cuda" in " ".join(out.split())


def test_backend_name_is_case_insensitive(tmp_path, capsys):
    rc, _, err = _main(capsys, "train", "--backend", "REFERENCE", "--steps", "0", "--out", tmp_path, *TINY)
    assert rc == 2
    _one_line(err, "--steps")  # got past --backend, to the check of --steps


def test_bad_backend_env_var_warns_once_and_uses_auto():
    env = dict(os.environ, MDRNET_FAST_BACKEND="nonsense")
    code = "import mdrnet_fast; print(mdrnet_fast.get_backend())"
    imported = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert imported.returncode == 0 and imported.stdout.strip() == "auto"
    _one_line(imported.stderr, "MDRNET_FAST_BACKEND", "'nonsense'", "auto, reference, cpu, triton, cuda")
    helped = subprocess.run([sys.executable, "-m", "mdrnet_fast", "--help"], env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "usage: mdrnet-fast" in helped.stdout
    _one_line(helped.stderr, "'nonsense'")


# --------------------------------------------------------------------------- checkpoints

def _load_error(capsys, path, *names):
    """The same one-line error from `train --resume PATH` and `eval --checkpoint PATH`."""
    rc, _, err = _main(capsys, "train", "--resume", path, "--out", path.parent / "run", *TINY)
    assert rc == 2
    _one_line(err, "mdrnet-fast train: error:", str(path), *names)
    assert not (path.parent / "run").exists()
    rc, _, err = _main(capsys, "eval", "--checkpoint", path)
    assert rc == 2
    _one_line(err, "mdrnet-fast eval: error:", str(path), *names)


def test_missing_checkpoint(tmp_path, capsys):
    _load_error(capsys, tmp_path / "nothing.ckpt", "not found")


def test_zero_byte_checkpoint(tmp_path, capsys):
    (tmp_path / "empty.ckpt").touch()
    _load_error(capsys, tmp_path / "empty.ckpt", "is empty (0 bytes)")


def test_truncated_checkpoint(small_checkpoint, capsys):
    data = small_checkpoint.read_bytes()
    small_checkpoint.write_bytes(data[:len(data) // 2])
    _load_error(capsys, small_checkpoint, "not a mdrnet-fast checkpoint (truncated or corrupt:")


def test_checkpoint_that_is_a_folder(tmp_path, capsys):
    (tmp_path / "dir.ckpt").mkdir()
    _load_error(capsys, tmp_path / "dir.ckpt", "is a folder")


def test_checkpoint_without_our_keys(tmp_path, capsys):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    _load_error(capsys, tmp_path / "other.ckpt", "not a mdrnet-fast checkpoint", "'stage'")
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(CommandError, match="holds a list"):
        common.load_checkpoint(tmp_path / "list.ckpt")


def test_resume_needs_the_training_state(small_checkpoint, capsys):
    """An inference-only checkpoint loads for eval but cannot resume training."""
    assert common.load_checkpoint(small_checkpoint)["stage"] == "full"
    rc, _, err = _main(capsys, "train", "--resume", small_checkpoint, "--out", small_checkpoint.parent / "run", *TINY)
    assert rc == 2
    _one_line(err, str(small_checkpoint), "'optimizer'")


# --------------------------------------------------------------------------- train arguments

def test_train_zero_steps_writes_nothing(tmp_path, capsys):
    rc, out, err = _main(capsys, "train", "--steps", "0", "--out", tmp_path / "run", *TINY)
    assert rc == 2 and out == ""
    _one_line(err, "mdrnet-fast train: error: --steps must be >= 1, got 0")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arg, value", [("--steps", "-3"), ("--batch-size", "0"), ("--lr", "0"), ("--lr", "nan"),
                                        ("--ckpt-every", "0"), ("--sample-every", "-1"), ("--threads", "0"),
                                        ("--image-size", "0"), ("--image-size", "40"), ("--synthetic-size", "0"),
                                        ("--workers", "-1"), ("--mask-ratio", "30%")])
def test_train_bad_numbers_write_nothing(tmp_path, capsys, arg, value):
    rc, _, err = _main(capsys, "train", "--out", tmp_path / "run", *TINY, arg, value)
    assert rc == 2
    _one_line(err, f"mdrnet-fast train: error: {arg} must be", value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("steps", [2, 1])
def test_resume_of_a_finished_run_writes_nothing(finished, capsys, steps):
    before = _files(finished)
    rc, out, err = _main(capsys, "train", "--resume", "--steps", steps, "--out", finished, *TINY)
    assert rc == 0 and err == ""
    _one_line(out, f"the run in {finished} already reached step 2 of --steps {steps}", "--resume --steps K",
              "K > 2")
    assert _files(finished) == before


# --------------------------------------------------------------------------- the mechanism

@pytest.mark.parametrize("exc, rc, line", [
    (CommandError("bad --thing\nsecond line"), 2, "mdrnet-fast train: error: bad --thing"),
    (ValueError("size must be positive"), 2, "mdrnet-fast train: error: size must be positive"),
    (FileNotFoundError("image folder not found: x"), 2, "mdrnet-fast train: error: image folder not found: x"),
    (SystemExit("mdrnet-fast: --image x does not exist"), 2, "mdrnet-fast train: error: --image x does not exist"),
    (RuntimeError("CUDA out of memory\nmore"), 1,
     "mdrnet-fast train: error: RuntimeError: CUDA out of memory (run with --debug for the traceback)"),
    (MemoryError(), 1, "mdrnet-fast train: error: MemoryError (run with --debug for the traceback)"),
    (KeyboardInterrupt(), 130, "mdrnet-fast train: interrupted"),
])
def test_errors_map_to_one_line_and_exit_code(monkeypatch, capsys, exc, rc, line):
    def fail(args):
        raise exc

    monkeypatch.setattr(train, "run", fail)
    code, out, err = _main(capsys, "train")
    assert code == rc and out == ""
    assert _one_line(err) == line


def test_debug_raises_with_the_traceback(monkeypatch, capsys):
    with pytest.raises(CommandError, match="--steps"):
        main(["--debug", "train", "--steps", "0", *TINY])
    with pytest.raises(CommandError, match="--steps"):
        main(["train", "--steps", "0", *TINY, "--debug"])
    shown = subprocess.run([sys.executable, "-m", "mdrnet_fast", "--debug", "train", "--steps", "0", *TINY],
                           capture_output=True, text=True)
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "CommandError: --steps" in shown.stderr


def test_usage_errors_are_one_line_too(capsys):
    rc, _, err = _main(capsys)
    assert rc == 2
    _one_line(err, "mdrnet-fast: error:", "COMMAND")
    rc, _, err = _main(capsys, "train", "--steps", "many")
    assert rc == 2
    _one_line(err, "mdrnet-fast train: error:", "--steps", "'many'")
