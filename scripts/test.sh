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
# Each stage's time, printed as it ends: CI's whole run should stay under
# 20 minutes on a 2-core machine, and this says which stage to look at.
stage_start=$SECONDS
stage_done() {
  echo "test.sh: $1 took $((SECONDS - stage_start)) s (total $SECONDS s)"
  stage_start=$SECONDS
}
bash scripts/build.sh --test
stage_done "the main build"
ctest --test-dir "${FO_BUILD_DIR:-build}" --output-on-failure -j "$jobs"
stage_done "the main tests"

# A CUDA build also proves the CPU-only one (FO_ENABLE_CUDA=OFF: no CUDA
# toolkit, runtime or NCCL; docs/install.md): it builds without nvcc and
# passes every CPU test, the installed package included.  On a machine
# without the toolkit the main build above already is that build.
if grep -q '^FO_ENABLE_CUDA:BOOL=ON' "${FO_BUILD_DIR:-build}/CMakeCache.txt" &&
  [ "${FO_TEST_CPU_ONLY:-1}" != 0 ]; then
  cpu="${FO_CPU_BUILD_DIR:-build-cpu}"
  echo "test.sh: the CPU-only build ($cpu, FO_ENABLE_CUDA=OFF)"
  FO_BUILD_DIR="$cpu" FO_CMAKE_ARGS="-DFO_ENABLE_CUDA=OFF" bash scripts/build.sh
  stage_done "the CPU-only build"
  ctest --test-dir "$cpu" --output-on-failure -j "$jobs"
  stage_done "the CPU-only tests"
fi

# The CPU tier, the multi-rank tier and the GPU tier on the emulated
# device (emu_test_gpu_*, sampled: FO_GPU_TEST_QUICK) under ASan + UBSan.
# The kernels only need to compile in this build, so PTX for one CUDA
# architecture (80-virtual: nvcc's front end without ptxas, a third of
# the main build's nvcc time; the main build makes and checks the machine
# code) and no examples or benchmarks.  The GPU tier itself is left out:
# it runs under compute-sanitizer on a GPU machine
# (docs/gpu-verification.md).
if [ "${FO_TEST_SANITIZE:-1}" != 0 ]; then
  san="${FO_SAN_BUILD_DIR:-build-asan}"
  echo "test.sh: the CPU tier and the emulated GPU tier under AddressSanitizer + UndefinedBehaviorSanitizer ($san)"
  FO_BUILD_DIR="$san" FO_CMAKE_ARGS="-DFO_SANITIZE=ON -DCMAKE_CUDA_ARCHITECTURES=80-virtual \
-DFO_BUILD_EXAMPLES=OFF -DFO_BUILD_BENCH=OFF" bash scripts/build.sh
  stage_done "the sanitized build"
  ctest --test-dir "$san" --output-on-failure -j "$jobs" -E '^(test_gpu|install_consumer)'
  stage_done "the sanitized tests"
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
  stage_done "the fuzz build and run"
fi
