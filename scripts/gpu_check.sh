#!/usr/bin/env bash
# One call on a GPU machine (torch preinstalled, no network): build fused_norm, run the whole test
# suite on CUDA, the torch-free kernel check, and the benchmark. Logs and JSON go to $OUT.
#   bash scripts/gpu_check.sh [tests|bench|standalone ...]   (default: all three)
set -uo pipefail
OUT=${OUT:-/tmp/fused_norm_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
steps=${*:-standalone tests bench}
status=0

{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  date -u; } | tee "$OUT/device.txt"

MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FUSED_NORM_CUDA=1 \
  python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 ||
  { tail -40 "$OUT/build.log"; exit 1; }
echo "built in ${SECONDS}s"

for step in $steps; do
  case $step in
    standalone)
      bash tests/cuda_standalone/run.sh >"$OUT/standalone.log" 2>&1 || status=1
      tail -12 "$OUT/standalone.log" ;;
    tests)
      python3 -X faulthandler -m pytest tests -q -p no:cacheprovider -x --timeout=600 \
        -k "${TEST_FILTER:-}" >"$OUT/tests.log" 2>&1 || status=1
      grep -E "passed|failed|Error|error" "$OUT/tests.log" | tail -25 ;;
    bench)
      python3 -m fused_norm.benchmark --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1 || status=1
      cut -c1-220 "$OUT/bench.log" ;;
  esac
done
exit $status
