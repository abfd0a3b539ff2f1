"""bench/gpu_proof.sh, the one-call GPU proof run, dry-run on the CPU: PY points at a stub Python that records its
arguments and answers as the real tools would (device name, pip, pytest, bench/paired_ratios.py writing its JSON),
and nvidia-smi is a stub on PATH. Checked: the stages run in order with the arguments the GPU needs, a short
DEADLINE cuts a stage and skips the rest while the summary is still written, and the output folder holds it all."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")

STUB = r'''#!{python}
import json, os, sys, time
argv = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as f:
    f.write(json.dumps(argv) + "\n")
if argv[:1] == ["-c"]:
    code = argv[1]
    if "get_device_name" in code:
        print("stub-gpu-80gb")
    elif "triton" in code:
        print("3.12.3 2.11.0+cu130 13.0 3.6.0")
    elif "backends" in code:
        print("{{}}")
    sys.exit(0)
time.sleep(float(os.environ.get("STUB_SLEEP", "0")))
if argv[:2] == ["-m", "pip"]:
    print("Successfully installed mdrnet_fast")
elif argv[:2] == ["-m", "pytest"]:
    print("[gw0] [ 50%] PASSED tests/test_gpu_async.py::test_a")
    print("[gw1] [100%] FAILED tests/test_model.py::test_b")
    print("==== 1 failed, 1 passed in 0.10s ====")
elif argv and argv[0].endswith("train_memory.py"):
    with open(argv[argv.index("--json") + 1], "w") as f:
        json.dump({{"meta": {{}}, "rows": []}}, f)
    print("| size | backend | checkpoint activations | peak RSS (GiB) |")
elif argv and argv[0].endswith("paired_ratios.py"):
    group = "model/x" if "--model" in argv else "masked_patch_attention/fwd/x"
    with open(argv[argv.index("--json") + 1], "w") as f:
        json.dump([{{"group": group, "impl": "reference", "median_ms": 1.0, "ratio": 1.0}}], f)
    print(group + ": warming up")
    print(group)
    print("  reference      1.000 ms    1.00x  [1.00, 1.00]   (warm-up 0.1 s)")
else:
    sys.exit(3)
'''


def _run(tmp_path, **env):
    stub, log, out, bin_dir = tmp_path / "python-stub", tmp_path / "calls.jsonl", tmp_path / "out", tmp_path / "bin"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'stub nvidia-smi'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    full_env = {**os.environ, "PY": str(stub), "STUB_LOG": str(log), "OUT": str(out),
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env}
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_proof.sh")], env=full_env, capture_output=True,
                         text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    stages = [line.split("\t") for line in (out / "logs" / "stages.tsv").read_text().splitlines()]
    return res, calls, stages, out


def _what(call):
    """A call of the stub, named: the stage it belongs to."""
    if call[0] == "-c":
        return "py-c"
    if call[:2] == ["-m", "pip"]:
        return "pip"
    if call[:2] == ["-m", "pytest"]:
        return "pytest"
    if call[0].endswith("train_memory.py"):
        return "train-memory"
    if call[0].endswith("paired_ratios.py"):
        if "--model" in call:
            return f"model-{call[call.index('--modes') + 1]}-{call[call.index('--dtype') + 1]}"
        return f"attention-{call[call.index('--dtype') + 1]}"
    return "?"


def test_every_stage_runs_in_order_and_the_summary_has_them(tmp_path):
    res, calls, stages, out = _run(tmp_path, DEADLINE="400",
                                   TEST_FILES="tests/test_gpu_async.py tests/test_not_in_this_checkout.py")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [_what(c) for c in calls if _what(c) != "py-c"] == [
        "pip", "pytest", "model-infer-bf16", "attention-fp32", "model-train-bf16", "model-infer-fp32",
        "model-train-fp32", "attention-bf16", "train-memory"]
    assert [(s[0], s[1]) for s in stages] == [
        ("build", "ok"), ("gpu tests", "ok"), ("model infer bf16", "ok"), ("attention fp32", "ok"),
        ("model train bf16", "ok"), ("model infer fp32", "ok"), ("model train fp32", "ok"), ("attention bf16", "ok"),
        ("train memory 1024", "ok")]
    pip, pytest_call, infer = (next(c for c in calls if _what(c) == w) for w in ("pip", "pytest", "model-infer-bf16"))
    assert pip == ["-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."]
    assert pytest_call[:4] == ["-m", "pytest", "-m", "gpu"] and "tests/test_gpu_async.py" in pytest_call
    assert "tests/test_not_in_this_checkout.py" not in pytest_call
    assert pytest_call[pytest_call.index("-k") + 1] == "(not fp64 and not fp16) or chunked_math"
    assert infer[infer.index("--model") + 1] == "paper:256:8" and "--device" in infer
    assert infer[infer.index("--impls") + 1:infer.index("--impls") + 6] == [
        "reference", "auto", "auto+graph", "auto+compile", "compile"]
    assert 0 < float(infer[infer.index("--budget-s") + 1]) < 90  # inside the stage's timeout
    summary = (out / "summary.md").read_text()
    assert "# MDRNet GPU proof: stub-gpu-80gb" in summary and "## Budget plan" in summary
    assert "| build | ok | 0 |" in summary and "| attention bf16 | ok | 0 |" in summary
    assert "1 failed, 1 passed" in summary and "FAILED tests/test_model.py::test_b" in summary
    assert "tests/test_not_in_this_checkout.py" in summary
    assert "reference      1.000 ms" in summary and "warming up" not in summary
    jsons = sorted(p.name for p in out.glob("*.json"))
    assert len(jsons) == 7 and sum(n.startswith("stub-gpu-80gb-paired-") for n in jsons) == 6
    assert any(n.startswith("stub-gpu-80gb-train-memory-1024-") for n in jsons)
    assert {"versions.txt", "nvidia-smi.txt", "backends.json", "build.log", "gpu-tests.log"} <= \
        {p.name for p in (out / "logs").iterdir()}
    assert "3.12.3 2.11.0+cu130" in (out / "logs" / "versions.txt").read_text()


def test_a_short_deadline_cuts_a_stage_skips_the_rest_and_still_writes_the_summary(tmp_path):
    # build takes 3 of the 5 s; the tests get the 2 left and are cut by their timeout; nothing else starts
    res, calls, stages, out = _run(tmp_path, DEADLINE="5", RESERVE="0", MIN_STAGE_S="1", STUB_SLEEP="3")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [_what(c) for c in calls if _what(c) != "py-c"] == ["pip", "pytest"]
    assert [(s[0], s[1]) for s in stages] == [
        ("build", "ok"), ("gpu tests", "cut"), ("model infer bf16", "skipped"), ("attention fp32", "skipped"),
        ("model train bf16", "skipped"), ("model infer fp32", "skipped"), ("model train fp32", "skipped"),
        ("attention bf16", "skipped"), ("train memory 1024", "skipped")]
    summary = (out / "summary.md").read_text()
    assert "| gpu tests | cut | 124 |" in summary and "| model train bf16 | skipped |" in summary
    assert not list(out.glob("*.json"))


def test_failing_stages_make_the_exit_status_nonzero_and_the_summary_is_still_written(tmp_path):
    # PY fails every call: no device name, every stage fails (the build is skipped here)
    res, calls, stages, out = _run(tmp_path, DEADLINE="400", SKIP_BUILD="1", PY="/bin/false")
    assert res.returncode == 1
    assert [(s[0], s[1]) for s in stages][:3] == [("build", "skipped"), ("gpu tests", "failed"),
                                                 ("model infer bf16", "failed")]
    summary = (out / "summary.md").read_text()
    assert "# MDRNet GPU proof: unknown-device" in summary and "| gpu tests | failed | 1 |" in summary
