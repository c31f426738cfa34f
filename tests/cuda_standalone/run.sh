#!/usr/bin/env bash
# Build and run the standalone (torch-free) checks + timing on the current GPU: row norms
# (row_norm_check), column norms (column_norm_check) and group norms (group_norm_check).
#   bash tests/cuda_standalone/run.sh [--no-check] [--no-bench] [--no-huge]
# (--no-huge applies to the row check only). CHECKS (default "row column group") picks the checks.
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

CHECKS=${CHECKS:-row column group}

# The fused add + norm kernels (row_norm_fused.cu), which row_norm.cu's entry points call.
ROW_EXTRA=csrc/cuda/row_norm_fused.cu

build() {  # build <kernel source.cu> <binary> [check source.cu] [second kernel source.cu]
  local objs=("$2.o")
  local check="${3:-tests/cuda_standalone/row_norm_check.cu}"
  "$NVCC" -O3 -std=c++17 --expt-relaxed-constexpr $GENCODE -Icsrc/cuda -Xptxas -v -c "$1" -o "$2.o" 2> "$2.ptxas.txt"
  if [[ -n "${4:-}" ]]; then
    "$NVCC" -O3 -std=c++17 --expt-relaxed-constexpr $GENCODE -Icsrc/cuda -Xptxas -v -c "$4" -o "$2.2.o" 2>> "$2.ptxas.txt"
    objs+=("$2.2.o")
  fi
  "$NVCC" -O3 -std=c++17 $GENCODE -Xcompiler -fopenmp "$check" "${objs[@]}" -o "$2" -lgomp
}

spills() {  # spills <ptxas log>: kernels with a stack frame or spills
  grep -E "bytes stack frame" "$1" | grep -vE "^\s*0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" | sort | uniq -c || true
}

{
  echo "== $("$NVCC" --version | tail -1)"
  pids=()
  [[ " $CHECKS " == *" row "* ]] && { build csrc/cuda/row_norm.cu "$BUILD/row_norm_check" "" "$ROW_EXTRA" & pids+=($!); }
  [[ " $CHECKS " == *" column "* ]] && { build csrc/cuda/column_norm.cu "$BUILD/column_norm_check" tests/cuda_standalone/column_norm_check.cu & pids+=($!); }
  [[ " $CHECKS " == *" group "* ]] && { build csrc/cuda/group_norm.cu "$BUILD/group_norm_check" tests/cuda_standalone/group_norm_check.cu & pids+=($!); }
  names=()
  if [[ -n "${VARIANTS:-}" ]]; then
    while IFS='|' read -r name expr; do
      [[ -z "$name" || "$name" == \#* ]] && continue
      sed -e "$expr" csrc/cuda/row_norm.cu > "$BUILD/row_norm_$name.cu"
      if cmp -s csrc/cuda/row_norm.cu "$BUILD/row_norm_$name.cu"; then echo "variant $name: sed changed nothing"; continue; fi
      build "$BUILD/row_norm_$name.cu" "$BUILD/check_$name" "" "$ROW_EXTRA" & pids+=($!)
      names+=("$name")
    done < "$VARIANTS"
  fi
  for p in "${pids[@]}"; do wait "$p"; done
  status=0
  if [[ " $CHECKS " == *" row "* ]]; then
    echo "== ptxas: kernels with stack or spills (row_norm.cu)"
    spills "$BUILD/row_norm_check.ptxas.txt"
    OMP_WAIT_POLICY=PASSIVE "$BUILD/row_norm_check" "$@" || status=$?
  fi
  if [[ " $CHECKS " == *" column "* ]]; then
    echo "== ptxas: kernels with stack or spills (column_norm.cu)"
    spills "$BUILD/column_norm_check.ptxas.txt"
    col_args=()
    for a in "$@"; do [[ "$a" != --no-huge ]] && col_args+=("$a"); done
    OMP_WAIT_POLICY=PASSIVE "$BUILD/column_norm_check" ${col_args[@]+"${col_args[@]}"} || status=$?
  fi
  if [[ " $CHECKS " == *" group "* ]]; then
    echo "== ptxas: kernels with stack or spills (group_norm.cu)"
    spills "$BUILD/group_norm_check.ptxas.txt"
    group_args=()
    for a in "$@"; do [[ "$a" != --no-huge ]] && group_args+=("$a"); done
    OMP_WAIT_POLICY=PASSIVE "$BUILD/group_norm_check" ${group_args[@]+"${group_args[@]}"} || status=$?
  fi
  for name in "${names[@]}"; do
    echo "== variant $name"
    OMP_WAIT_POLICY=PASSIVE "$BUILD/check_$name" ${VARIANT_ARGS:---no-check} | grep -E "^FAIL|correctness|TB/s|^ +[0-9]+ +[0-9]+ \|" || true
  done
  exit $status
} 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
