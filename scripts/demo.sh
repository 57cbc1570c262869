#!/usr/bin/env bash
# The main job: set up, build, and train an MLP on the 8x8 digits with the
# library's AdamW (on the GPU when one is usable, else on the CPU).
# Arguments go to the training program: docs/train.md lists them
# (--compare trains with every optimizer; --bowl runs the quadratic bowl).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh --demo
exec "${FO_BUILD_DIR:-build}/examples/train" "$@"
