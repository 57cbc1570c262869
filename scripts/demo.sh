#!/usr/bin/env bash
# The main job: set up, build, and train the example with every optimizer.
# Arguments go to the training program (see examples/train.c).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec "${FO_BUILD_DIR:-build}/examples/train" "$@"
