#!/usr/bin/env bash
# Set up, build and run the whole test suite.  GPU tests skip themselves,
# printing why, on a machine without a usable CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
ctest --test-dir "${FO_BUILD_DIR:-build}" --output-on-failure -j "$(nproc)"
