#!/usr/bin/env bash
# Build the benchmark for the GPU in front of us and run it: bench over lists
# a-d, then scripts/bench_torch.py against PyTorch.  Results go to $OUT (the
# lent machine's output folder) or bench/results/; plots are made afterwards
# with bench/plot.sh wherever gnuplot is (docs/performance.md).
#
#   bash bench/run_gpu.sh [all|bench|torch]    (default all)
#
# On a lent H100 each part fits one 10-minute command; the build is
# incremental, so the second part reuses the first one's when the machine
# is still warm.  Files written (8 at most come back from a lent machine):
#   gpu_info.txt build.log bench_gpu_{a,b,c,d}.csv bench_gpu.log  (bench)
#   gpu_info.txt build.log torch_gpu.csv torch_gpu.log              (torch)
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
out=${OUT:-bench/results}
build=${FO_BENCH_BUILD:-build-bench-gpu}
arch=${FO_CUDA_ARCH:-90}
mkdir -p "$out"
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"

# Release flags; the library's own per-file flags (-O3 on the CPU executor)
# still apply.  Tests and examples are not needed (and Criterion is absent
# on the lent machines).
{
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DFO_BUILD_TESTS=OFF -DFO_BUILD_EXAMPLES=OFF
  cmake --build "$build" --target bench fusedopt
} >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }

{
  date -u +"date: %Y-%m-%dT%H:%MZ"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,temperature.gpu,power.draw,clocks.sm,clocks.mem --format=csv
  nvcc --version | tail -2
} >"$out/gpu_info.txt" 2>&1 || true

# One process and one CSV per list, written as it goes: a failure or the
# command's time limit in one list keeps the others' rows.
run_bench() {
  : >"$out/bench_gpu.log"
  for list in a c d b; do
    "$build/bench/bench" --list "$list" --csv "$out/bench_gpu_$list.csv" 2>&1 |
      tee -a "$out/bench_gpu.log" || true
  done
}

run_torch() {
  PYTHONUNBUFFERED=1 python3 scripts/bench_torch.py --lib "$build/host/libfusedopt.so" --lists a,mlp,d,c,b \
    --csv "$out/torch_gpu.csv" 2>&1 | tee "$out/torch_gpu.log" || true
}

case "$part" in
  bench) run_bench ;;
  torch) run_torch ;;
  all) run_bench; run_torch ;;
  *) echo "usage: bash bench/run_gpu.sh [all|bench|torch]" >&2; exit 2 ;;
esac
