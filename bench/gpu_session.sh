#!/usr/bin/env bash
# Everything a lent GPU machine is for, in as few device calls as possible (see the `device` tool: 10 minutes
# a call, 30 minutes a session, at most 8 files back). Run from the repository root on the GPU machine.
# Stages, several in one call:
#
#   bash bench/gpu_session.sh build tests        # install (builds _C and _C_cuda), every `gpu` test
#   bash bench/gpu_session.sh sanitize           # compute-sanitizer memcheck over the CUDA kernels' tests
#   bash bench/gpu_session.sh bench-ops          # op benchmarks: reference, triton, cuda, compile (one run per op)
#   bash bench/gpu_session.sh bench-model        # whole-model benchmarks (paper preset, 256^2 batch 8 by default)
#   bash bench/gpu_session.sh overhead           # host time per op call, fwd+bwd on tiny tensors (bench/op_overhead.py)
#   bash bench/gpu_session.sh profile            # torch.profiler tables of the model steps (bench/profile_model.py)
#   bash bench/gpu_session.sh paired             # model steps of every eager impl timed in the same rounds
#
# bench/gpu_proof.sh is the one-call proof run (build, gpu tests, paired model ratios) with a summary.
#
# Every stage installs first if mdrnet_fast is not importable with its CUDA extension (ninja rebuilds only
# what changed). Each stage runs under its own `timeout`, cut to what is left of DEADLINE seconds (default
# 560, inside the device's 600 s limit), so the script always ends itself and packs its logs: everything
# goes to $OUT/gpu-<stages>-<device>.tgz (the op benchmarks as one JSON per op), the model JSON also to $OUT. The last lines of each log print.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mdrnet-gpu-out}
LOGS=$(mktemp -d /tmp/mdrnet-gpu-logs.XXXX)
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-560}
XDIST=${XDIST:-8}
. bench/gpu_common.sh   # PY, the build environment, left, stage, install
DEV=$(device_slug)
DATE=$(date +%Y%m%d)
STAGES=$(IFS=-; echo "$*")
pack() { tar czf "$OUT/gpu-$STAGES-$DEV.tgz" -C "$LOGS" . ; }
trap pack EXIT

bench_op() {  # op name as in the benchmark ids
  local json="$LOGS/$DEV-$1-$DATE.json"
  TAIL=3 stage "bench $1" "bench-$1.log" "${OP_TIMEOUT:-150}" "$PY" -m pytest bench/test_bench_ops.py --benchmark-only \
    --benchmark-quiet -q -p no:cacheprovider -p no:warnings -k "cuda and $1" --benchmark-json="$json"
}

rc=0
for what in "$@"; do
  case $what in
    build) install force ;;
    tests)
      install
      # -v: every test's name and outcome goes to the log as it finishes (a run cut by its timeout still says
      # which tests failed; under xdist -q names them only in the final summary)
      stage "gpu tests" "gpu-tests.log" "${TESTS_TIMEOUT:-330}" "$PY" -m pytest -m gpu -v -n "$XDIST" -p no:cacheprovider \
        -p no:warnings tests/ --junitxml="$LOGS/gpu-tests.xml" || rc=1
      grep -E "^\[gw[0-9]+\].* (FAILED|ERROR) " "$LOGS/gpu-tests.log" | head -40 ;;
    sanitize)
      install
      # no caching allocator: an out-of-bounds access inside a cached block would be invisible to memcheck;
      # the argument-error tests launch nothing and run in the plain `tests` stage
      TAIL=25 stage "compute-sanitizer memcheck" "sanitizer.log" "${SAN_TIMEOUT:-200}" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        compute-sanitizer --tool memcheck --error-exitcode 9 --print-limit 30 --target-processes all \
        "$PY" -m pytest -m gpu -q -n 4 -p no:cacheprovider -p no:warnings tests/test_cuda_kernels.py \
        tests/test_cuda_epilogues.py -k "not fp64 and not errors and not checks" || rc=1 ;;
    bench-ops)
      install
      for op in ${OPS:-partial_conv2d gated_conv2d region_avg_pool region_broadcast memory_read memory_update_ spade_modulate masked_patch_attention}; do
        bench_op "$op" || rc=1
      done
      "$PY" -m mdrnet_fast bench-report "$LOGS"/"$DEV"-*-"$DATE".json 2>&1 | tee "$LOGS/bench-ops-table.txt" ;;
    overhead)
      install
      TAIL=12 stage "host overhead per op" "op-overhead.log" 120 "$PY" bench/op_overhead.py --backend cuda --device cuda ;;
    profile)
      install
      # where the GPU model steps spend their time (self CUDA time per op; GPU busy vs wall): what to speed up next
      for mode in infer train; do
        TAIL=45 stage "profile $mode" "profile-$mode.log" "${PROFILE_TIMEOUT:-150}" "$PY" bench/profile_model.py \
          --device cuda --mode "$mode" --config "${PROFILE_CONFIG:-paper:256:8}" --impls ${PROFILE_IMPLS:-reference auto cuda} \
          --rows 40 || rc=1
      done ;;
    paired)
      install
      # the eager model rows again, every implementation in the same rounds (bench/paired_ratios.py): ratios that
      # do not depend on the machine staying at one speed through the run
      for mode in infer train; do
        impls=$([ "$mode" = infer ] && echo "reference auto auto+graph reference+graph cuda triton" \
                || echo "reference auto auto+graph cuda triton")
        TAIL=12 stage "paired model $mode" "paired-$mode.log" "${PAIRED_TIMEOUT:-150}" "$PY" bench/paired_ratios.py \
          --device cuda --model "${PAIRED_CONFIG:-paper:256:8}" --modes "$mode" --impls $impls --rounds 15 \
          --json "$LOGS/$DEV-paired-model-$mode-$DATE.json" || rc=1
        cp "$LOGS/$DEV-paired-model-$mode-$DATE.json" "$OUT"/ 2>/dev/null
      done ;;
    bench-model)
      install
      # eager rows first (each a few seconds), then torch.compile's (a cold compile of a training step takes
      # minutes): a run cut by the deadline still has the eager table. MODEL_PARTS="eager" leaves compile out.
      for part in ${MODEL_PARTS:-eager compile}; do
        sel=$([ "$part" = compile ] && echo "cuda and compile" || echo "cuda and not compile")
        json="$LOGS/$DEV-model-$DATE-$part.json"
        TAIL=40 stage "model benchmarks ($part)" "bench-model-$part.log" "${MODEL_TIMEOUT:-400}" \
          env MDRNET_FAST_BENCH_MODEL="${MODEL_CONFIGS:-paper:256:8}" "$PY" -m pytest bench/test_bench_model.py \
          --benchmark-only --benchmark-quiet -q -p no:cacheprovider -p no:warnings -k "$sel" --benchmark-json="$json" || rc=1
        cp "$json" "$OUT"/ 2>/dev/null
        "$PY" -m mdrnet_fast bench-report "$json" 2>&1 | tee "$LOGS/bench-model-$part-table.txt"
      done ;;
    *) echo "gpu_session: unknown stage $what (build, tests, sanitize, bench-ops, bench-model, overhead, profile, paired)"; exit 2 ;;
  esac
done
exit $rc
