#!/usr/bin/env bash
# Build and run the standalone (torch-free) row_norm check + timing on the current GPU.
#   bash tests/cuda_standalone/run.sh [--no-check] [--no-bench] [--no-huge]
# ARCH (default 90) selects the target; the log goes to $OUT/row_norm_check.log when OUT is set.
# Tuning: VARIANTS=file with lines "name|sed-expression" builds copies of row_norm.cu with the
# expression applied (e.g. a launch-config constant changed) and times each; VARIANT_ARGS
# (default --no-check) are the variants' arguments.
set -euo pipefail
cd "$(dirname "$0")/../.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
ARCH=${ARCH:-90}
BUILD=${BUILD:-build/cuda_standalone}
mkdir -p "$BUILD"
LOG=/dev/null
if [[ -n "${OUT:-}" ]]; then LOG="$OUT/row_norm_check.log"; fi
GENCODE="-gencode arch=compute_${ARCH},code=sm_${ARCH}"

build() {  # build <source.cu> <binary>
  local obj="$2.o"
  "$NVCC" -O3 -std=c++17 --expt-relaxed-constexpr $GENCODE -Icsrc/cuda -Xptxas -v -c "$1" -o "$obj" 2> "$2.ptxas.txt"
  "$NVCC" -O3 -std=c++17 $GENCODE -Xcompiler -fopenmp tests/cuda_standalone/row_norm_check.cu "$obj" -o "$2" -lgomp
}

{
  echo "== $("$NVCC" --version | tail -1)"
  pids=()
  build csrc/cuda/row_norm.cu "$BUILD/row_norm_check" & pids+=($!)
  names=()
  if [[ -n "${VARIANTS:-}" ]]; then
    while IFS='|' read -r name expr; do
      [[ -z "$name" || "$name" == \#* ]] && continue
      sed -e "$expr" csrc/cuda/row_norm.cu > "$BUILD/row_norm_$name.cu"
      if cmp -s csrc/cuda/row_norm.cu "$BUILD/row_norm_$name.cu"; then echo "variant $name: sed changed nothing"; continue; fi
      build "$BUILD/row_norm_$name.cu" "$BUILD/check_$name" & pids+=($!)
      names+=("$name")
    done < "$VARIANTS"
  fi
  for p in "${pids[@]}"; do wait "$p"; done
  echo "== ptxas: kernels with stack or spills (base build)"
  grep -E "bytes stack frame" "$BUILD/row_norm_check.ptxas.txt" | grep -vE "^\s*0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" | sort | uniq -c || true
  status=0
  OMP_WAIT_POLICY=PASSIVE "$BUILD/row_norm_check" "$@" || status=$?
  for name in "${names[@]}"; do
    echo "== variant $name"
    OMP_WAIT_POLICY=PASSIVE "$BUILD/check_$name" ${VARIANT_ARGS:---no-check} | grep -E "^FAIL|correctness|TB/s|^ +[0-9]+ +[0-9]+ \|" || true
  done
  exit $status
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
