#!/usr/bin/env bash
# Everything a lent GPU machine is for, in as few device calls as possible (see the `device` tool: about 10
# minutes a call, 30 minutes a session). Run from the repository root on the GPU machine; results go to $OUT
# (the device tool brings that folder back). Stages, one per call or several in one:
#
#   bash bench/gpu_session.sh build tests        # install (builds _C and _C_cuda), every `gpu` test
#   bash bench/gpu_session.sh sanitize           # compute-sanitizer memcheck over the CUDA kernels' tests
#   bash bench/gpu_session.sh bench-ops          # op benchmarks: reference, triton, cuda, compile
#   bash bench/gpu_session.sh bench-model        # whole-model benchmarks (paper preset, 256^2 batch 8 by default)
#
# Every stage installs first if mdrnet_fast is not importable with its CUDA extension (ninja rebuilds only
# what changed). The last lines of each stage's log are printed, full logs and JSONs are in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mdrnet-gpu-out}
mkdir -p "$OUT"
PY=${PY:-python3}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TRITON_INTERPRET=0          # compiled Triton kernels (tests/conftest.py defaults to the interpreter)
DEV=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))")
DATE=$(date +%Y%m%d)

install() {
  if "$PY" -c "import mdrnet_fast._C, mdrnet_fast._C_cuda" 2>/dev/null && [ "${1:-}" != force ]; then return 0; fi
  echo "== install (MAX_JOBS=$MAX_JOBS, archs $TORCH_CUDA_ARCH_LIST)"
  if ! MDRNET_FAST_BUILD_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/install.log" 2>&1; then
    tail -40 "$OUT/install.log"; exit 1
  fi
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
  "$PY" -c "import json, mdrnet_fast; print(json.dumps(mdrnet_fast.backends(), indent=1))" | tee "$OUT/backends.json"
}

stage() {  # name, log, command...
  local name=$1 log=$2; shift 2
  echo "== $name"
  local t0=$SECONDS
  "$@" > "$OUT/$log" 2>&1
  local rc=$?
  tail -${TAIL:-15} "$OUT/$log"
  echo "== $name: rc=$rc in $((SECONDS - t0)) s (log: $log)"
  return $rc
}

rc=0
for what in "$@"; do
  case $what in
    build) install force ;;
    tests)
      install
      stage "gpu tests" "gpu-tests-$DEV.log" "$PY" -m pytest -m gpu -q -p no:cacheprovider -p no:warnings tests/ \
        --junitxml="$OUT/gpu-tests-$DEV.xml" || rc=1 ;;
    sanitize)
      install
      stage "compute-sanitizer memcheck" "sanitizer-$DEV.log" compute-sanitizer --tool memcheck --error-exitcode 9 \
        "$PY" -m pytest -m gpu -q -x -p no:cacheprovider -p no:warnings tests/test_cuda_kernels.py \
        tests/test_cuda_epilogues.py -k "not fp64" || rc=1 ;;
    bench-ops)
      install
      TAIL=80 stage "op benchmarks" "bench-ops-$DEV.log" "$PY" -m mdrnet_fast bench --filter "test_op and cuda" \
        --json "$OUT/$DEV-ops-$DATE.json" || rc=1 ;;
    bench-model)
      install
      TAIL=40 stage "model benchmarks" "bench-model-$DEV.log" env MDRNET_FAST_BENCH_MODEL="${MODEL_CONFIGS:-paper:256:8}" \
        "$PY" -m mdrnet_fast bench --filter "test_model and cuda" --json "$OUT/$DEV-model-$DATE.json" || rc=1 ;;
    *) echo "gpu_session: unknown stage $what (build, tests, sanitize, bench-ops, bench-model)"; exit 2 ;;
  esac
done
exit $rc
