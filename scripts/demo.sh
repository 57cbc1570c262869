#!/usr/bin/env bash
# The main job: set up, build, and train an MLP on the 8x8 digits with the
# library's AdamW (on the GPU when one is usable, else on the CPU).
# Arguments go to the training program: docs/train.md lists them
# (--compare trains with every optimizer; --bowl runs the quadratic bowl).
# It builds in the repository and trains in the caller's directory, so
# relative --data, --out and --trajectory paths are the caller's (the
# default output, out/, too).
set -euo pipefail
here=$(pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/build.sh --demo
build=${FO_BUILD_DIR:-build}
case $build in /*) ;; *) build=$root/$build ;; esac
cd "$here"
exec "$build/examples/train" "$@"
