#!/usr/bin/env bash
# Installs the built library into a temporary prefix, then builds and runs
# a consumer through find_package(fusedopt) and through pkg-config.
#   check.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"; src="$2"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src/tests/consumer" -B "$tmp/cmake-build" -G Ninja \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cmake-build" >/dev/null
LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/cmake-build/consumer"
pc="$(find "$tmp/prefix" -name fusedopt.pc)"
PKG_CONFIG_PATH="$(dirname "$pc")" cc -std=c11 "$src/tests/consumer/main.c" \
  $(PKG_CONFIG_PATH="$(dirname "$pc")" pkg-config --cflags --libs fusedopt) -o "$tmp/pc-consumer"
LD_LIBRARY_PATH="$tmp/prefix/lib" "$tmp/pc-consumer"
echo "consumer: find_package and pkg-config both work"
