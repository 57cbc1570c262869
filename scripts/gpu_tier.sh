#!/usr/bin/env bash
# The whole GPU tier in one command, for a lent GPU machine (one device run
# costs minutes of a 30-minute budget: build, test and check in one go).
#
#   bash scripts/gpu_tier.sh            (in the repository root, .devpack carried)
#
# Builds for the device's architecture (FO_CUDA_ARCH, default 90) in
# build-gpu, runs every GPU test (test_gpu_*, train_example_gpu) with
# Criterion's verbose output, then compute-sanitizer's memcheck, racecheck
# and initcheck on one test of each kernel family, and writes the logs to
# $OUT (the lent machine's output folder) or build-gpu/logs.  The summary
# at the end is what docs/gpu-verification.md records.  Needs Criterion:
# `bash ../shared/device/pack-criterion.sh` here first, carry .devpack.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-build-gpu/logs}
arch=${FO_CUDA_ARCH:-90}
mkdir -p "$out"
[ -f .devpack/env.sh ] && source .devpack/env.sh
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"

{
  date -u +"date: %Y-%m-%dT%H:%MZ"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  nvcc --version | tail -2
} >"$out/gpu_info.txt" 2>&1

if ! { cmake -S . -B build-gpu -G Ninja -DCMAKE_CUDA_ARCHITECTURES="$arch" \
         -DFO_BUILD_BENCH=OFF &&
       cmake --build build-gpu; } >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  exit 1
fi

# Every GPU test; a skip on a GPU machine is a failure to look at.
(cd build-gpu && ctest -R 'gpu' --output-on-failure --timeout 900) >"$out/ctest_gpu.log" 2>&1
rc_tier=$?

# The kernels under compute-sanitizer (NCCL's initialisation reports API
# errors: leave those out; memory errors are still reported).
san() { # TOOL BINARY FILTER
  compute-sanitizer --tool "$1" --report-api-errors no --error-exitcode 99 \
    "build-gpu/tests/$2" --filter="$3" --jobs=1 2>&1 | tail -25
  echo "== $1 $2 $3: exit ${PIPESTATUS[0]}"
}
{
  for tool in memcheck racecheck initcheck; do
    san "$tool" test_gpu_kernels 'gpu/sync_master_and_zero_grad'
    san "$tool" test_gpu_mixed_precision 'gpu_mp/clipping_matches_the_cpu_executor_and_a_double_norm'
    san "$tool" test_gpu_comm 'gpu_comm/one_rank_sharded_state'
  done
} >"$out/sanitizer.log" 2>&1

{
  echo "GPU tier (ctest -R gpu): exit $rc_tier"
  grep -E "tests passed|tests failed|\*\*\*Failed|\(Failed\)|Skipped|Synthesis" "$out/ctest_gpu.log"
  grep -E "^== |ERROR SUMMARY" "$out/sanitizer.log"
} | tee "$out/summary.txt"
exit "$rc_tier"
