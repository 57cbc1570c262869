#!/usr/bin/env bash
# Installs what fusedopt needs to build and test on a Debian machine, and
# says whether the CUDA toolkit (not a Debian package here) was found:
# without it the build is CPU-only.
# Installs only what is missing, so a second run costs a second.
#   deps.sh          what building and testing need
#   deps.sh --demo   also what the demo's plot needs (gnuplot)
#   deps.sh --test   also what scripts/test.sh's fuzz pass needs (clang),
#                    what fusedopt.torch's tests need (python3-torch) and
#                    what the package's install test needs (venv, pip,
#                    setuptools, wheel for /usr/bin/python3)
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_cmd cmake || need+=(cmake)
have_cmd ninja || need+=(ninja-build)
have_cmd pkg-config || need+=(pkg-config)
have_cmd gcc || need+=(gcc)
have_cmd g++ || need+=(g++)
pkg-config --exists criterion 2>/dev/null || need+=(libcriterion-dev)
pkg-config --exists zlib 2>/dev/null || need+=(zlib1g-dev) # examples/train reads gzip
# Open MPI: the fusedopt_mpi glue and the multi-rank tests (mpirun -np 2, 4)
have_cmd mpirun || need+=(openmpi-bin)
pkg-config --exists ompi-c 2>/dev/null || need+=(libopenmpi-dev)
# The demo draws its loss curves with gnuplot; the tests do not need it.
if [ "${1:-}" = "--demo" ]; then have_cmd gnuplot || need+=(gnuplot-nox); fi
# The checkpoint reader's fuzz target is built with clang (libFuzzer).
if [ "${1:-}" = "--test" ]; then
  have_cmd clang || need+=(clang)
  # CTest python_install: pip install ./python into a venv, offline
  for m in venv:python3-venv pip:python3-pip setuptools:python3-setuptools wheel:python3-wheel; do
    /usr/bin/python3 -c "import ${m%%:*}" >/dev/null 2>&1 || need+=("${m#*:}")
  done
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# fusedopt.torch's tests (CTest python_torch) run under Debian's python3-torch
# (1.13, CPU) with /usr/bin/python3; a torch wheel with CUDA is gigabytes.
# Without recommends it is about 50 MB of downloads (the test SKIPs without it).
if [ "${1:-}" = "--test" ] && ! /usr/bin/python3 -c "import torch" >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  [ ${#need[@]} -gt 0 ] || $SUDO apt-get update -qq
  if apt-cache show python3-torch >/dev/null 2>&1; then
    echo "deps: installing python3-torch (fusedopt.torch's tests)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      python3-torch >/dev/null
  else
    echo "deps: no python3-torch package here: fusedopt.torch's tests will SKIP" >&2
  fi
fi

# CUDA is optional: without nvcc the build is CPU-only (FO_ENABLE_CUDA=OFF,
# docs/install.md), with every CPU test and the demo on the CPU.
if ! have_cmd nvcc; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    echo "deps: nvcc is not on PATH; scripts/build.sh adds /usr/local/cuda/bin" \
      "(export PATH=/usr/local/cuda/bin:\$PATH for your own cmake)" >&2
  else
    echo "deps: no CUDA toolkit (nvcc) found: building CPU-only (FO_EXEC_CPU; the CUDA" \
      "executor needs CUDA 12.8 or newer, which is not a Debian package here)" >&2
  fi
fi
