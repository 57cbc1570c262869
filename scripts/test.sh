#!/usr/bin/env bash
# Set up, build and run the whole test suite; with CUDA, the CPU tier again
# in a build without CUDA; then the CPU tier again under
# AddressSanitizer + UndefinedBehaviorSanitizer; then the checkpoint
# reader's fuzz target for a bounded number of executions.  GPU tests skip
# themselves, printing why, on a machine without a usable CUDA device.
#   FO_BUILD_DIR       the main build (default build)
#   FO_CPU_BUILD_DIR   the CPU-only build of a CUDA machine (default build-cpu)
#   FO_SAN_BUILD_DIR   the sanitizer build (default build-asan)
#   FO_FUZZ_BUILD_DIR  the fuzz build (default build-fuzz)
#   FO_TEST_CPU_ONLY=0 / FO_TEST_SANITIZE=0 / FO_TEST_FUZZ=0   skip that pass
#                      (local runs)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="$(nproc)"
bash scripts/build.sh --test
ctest --test-dir "${FO_BUILD_DIR:-build}" --output-on-failure -j "$jobs"

# A CUDA build also proves the CPU-only one (FO_ENABLE_CUDA=OFF: no CUDA
# toolkit, runtime or NCCL; docs/install.md): it builds without nvcc and
# passes every CPU test, the installed package included.  On a machine
# without the toolkit the main build above already is that build.
if grep -q '^FO_ENABLE_CUDA:BOOL=ON' "${FO_BUILD_DIR:-build}/CMakeCache.txt" &&
  [ "${FO_TEST_CPU_ONLY:-1}" != 0 ]; then
  cpu="${FO_CPU_BUILD_DIR:-build-cpu}"
  echo "test.sh: the CPU-only build ($cpu, FO_ENABLE_CUDA=OFF)"
  FO_BUILD_DIR="$cpu" FO_CMAKE_ARGS="-DFO_ENABLE_CUDA=OFF" bash scripts/build.sh
  ctest --test-dir "$cpu" --output-on-failure -j "$jobs"
fi

# The CPU tier (and the multi-rank tier) under ASan + UBSan.  The kernels
# only need to compile in this build, so one CUDA architecture (half the
# nvcc time) and no examples or benchmarks.  The GPU tier is left out: it
# runs under compute-sanitizer on a GPU machine (docs/gpu-verification.md).
if [ "${FO_TEST_SANITIZE:-1}" != 0 ]; then
  san="${FO_SAN_BUILD_DIR:-build-asan}"
  echo "test.sh: the CPU tier under AddressSanitizer + UndefinedBehaviorSanitizer ($san)"
  FO_BUILD_DIR="$san" FO_CMAKE_ARGS="-DFO_SANITIZE=ON -DCMAKE_CUDA_ARCHITECTURES=80 \
-DFO_BUILD_EXAMPLES=OFF -DFO_BUILD_BENCH=OFF" bash scripts/build.sh
  ctest --test-dir "$san" --output-on-failure -j "$jobs" -E '^(test_gpu|install_consumer)'
fi

# The checkpoint reader's libFuzzer target: a separate clang build of only
# the reader's C sources (tests/fuzz/CMakeLists.txt), run from the
# committed seed corpus.
if [ "${FO_TEST_FUZZ:-1}" != 0 ]; then
  fuzz="${FO_FUZZ_BUILD_DIR:-build-fuzz}"
  echo "test.sh: fuzzing the checkpoint reader ($fuzz)"
  cmake -S tests/fuzz -B "$fuzz" -G Ninja -DCMAKE_C_COMPILER=clang >/dev/null
  cmake --build "$fuzz" -j "$jobs"
  ctest --test-dir "$fuzz" --output-on-failure
fi
