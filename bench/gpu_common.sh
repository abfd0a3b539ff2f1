# Helpers shared by bench/gpu_session.sh and bench/gpu_proof.sh; sourced from the repository root, after the
# caller has set OUT, LOGS and DEADLINE (seconds since the script started, bash's SECONDS).
#
#   PY            the Python that runs everything (default python3; tests/test_gpu_proof.py points it at a stub)
#   RESERVE       seconds kept back from DEADLINE for what runs after the last stage (default 0)
#   MIN_STAGE_S   a stage with less time than this left is skipped (default 20)
#   stage NAME LOG LIMIT CMD...   runs CMD under `timeout` (LIMIT cut to what is left), output in $LOGS/LOG;
#                 one line per stage goes to $LOGS/stages.tsv: name, status (ok, failed, cut, skipped), rc,
#                 seconds, budget, log
PY=${PY:-python3}
RESERVE=${RESERVE:-0}
MIN_STAGE_S=${MIN_STAGE_S:-20}
export PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TRITON_INTERPRET=0          # compiled Triton kernels (tests/conftest.py defaults to the interpreter)
# the lent GPU image sets CC/CXX to a gcc in /opt/gcc that links libstdc++ statically: modules built with it
# segfault on their first error message (setup.py refuses them); the system gcc links it dynamically
export CC=${MDRNET_CC:-gcc} CXX=${MDRNET_CXX:-g++}

left() { echo $((DEADLINE - RESERVE - SECONDS)); }

device_slug() {  # the CUDA device's name as a file-name part, e.g. nvidia-h100-80gb-hbm3
  timeout 60 "$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()).strip('-'))" \
    2>/dev/null || echo unknown-device
}

record_stage() {  # name status rc seconds budget log
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$LOGS/stages.tsv"
}

stage() {  # name, log, seconds, command...
  local name=$1 log=$2 limit=$3; shift 3
  local budget=$(( $(left) < limit ? $(left) : limit ))
  if [ "$budget" -lt "$MIN_STAGE_S" ]; then
    echo "== $name: skipped, $(left) s left"
    record_stage "$name" skipped - 0 "$budget" "$log"
    return 1
  fi
  echo "== $name (timeout $budget s)"
  local t0=$SECONDS
  timeout -k 5 "$budget" "$@" > "$LOGS/$log" 2>&1
  local rc=$?
  tail -"${TAIL:-15}" "$LOGS/$log"
  local status=ok
  case $rc in 0) ;; 124|137) status=cut ;; *) status=failed ;; esac
  echo "== $name: rc=$rc ($status) in $((SECONDS - t0)) s (log: $log)"
  record_stage "$name" "$status" "$rc" "$((SECONDS - t0))" "$budget" "$log"
  return $rc
}

pip_install_cmd() {  # the editable install that builds _C and _C_cuda (ninja rebuilds only what changed)
  MDRNET_FAST_BUILD_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e .
}

versions() {
  timeout 60 "$PY" -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__)"
}

install() {  # gpu_session.sh: install unless importable with the CUDA extension ("force": always); exit 1 on failure
  if "$PY" -c "import mdrnet_fast._C, mdrnet_fast._C_cuda" 2>/dev/null && [ "${1:-}" != force ]; then return 0; fi
  echo "== install (MAX_JOBS=$MAX_JOBS, archs $TORCH_CUDA_ARCH_LIST)"
  local t0=$SECONDS
  versions | tee "$LOGS/versions.txt"
  nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
  if ! pip_install_cmd > "$LOGS/install.log" 2>&1; then
    tail -40 "$LOGS/install.log"; exit 1
  fi
  "$PY" -c "import json, mdrnet_fast; print(json.dumps(mdrnet_fast.backends(), indent=1))" > "$LOGS/backends.json"
  echo "== install: $((SECONDS - t0)) s"
}
