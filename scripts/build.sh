#!/usr/bin/env bash
# Configures and builds fusedopt in build/ (after installing what is missing).
# Arguments go to scripts/deps.sh (--demo: also install the demo's gnuplot).
#   FO_BUILD_DIR   build directory (default build)
#   FO_CMAKE_ARGS  extra arguments for cmake's configure step
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
bash scripts/deps.sh "$@"
dir="${FO_BUILD_DIR:-build}"
cmake -S . -B "$dir" -G Ninja ${FO_CMAKE_ARGS:-} >/dev/null
cmake --build "$dir" -j "$(nproc)"
