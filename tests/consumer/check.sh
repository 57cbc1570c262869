#!/usr/bin/env bash
# Installs the built library into a temporary prefix, checks the installed
# files as a packager would, then builds and runs a consumer (main.c) of
# every kind: the shared and the static library, through find_package
# (as C and as C++) and through pkg-config (C), checking that the shared
# library's consumers see none of its private dependencies, and the MPI
# glue's consumer (mpi_main.c) when MPI was found.  A build
# without CUDA (FO_ENABLE_CUDA=OFF) is checked to depend on neither CUDA
# nor NCCL.  docs/install.md.
#   check.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$(cd "$1" && pwd)"; src="$(cd "$2" && pwd)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
fail() { echo "consumer: FAIL: $*" >&2; exit 1; }
cache_bool() { # the value of a BOOL cache entry of the build, as 1 or 0
  case "$(sed -n "s/^$1:BOOL=//p" "$build/CMakeCache.txt")" in ON | TRUE | 1) echo 1 ;; *) echo 0 ;; esac
}
cuda=$(cache_bool FO_ENABLE_CUDA)
nccl=$(cache_bool FO_ENABLE_NCCL)
prefix="$tmp/prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
lib="$(dirname "$(find "$prefix" -name 'libfusedopt.a')")"
[ -n "$lib" ] || fail "no libfusedopt.a installed"

# ---- the installed files
version="$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")"
IFS=. read -r major minor _ <<<"$version"
soname="libfusedopt.so.$major.$minor"
[ -f "$lib/libfusedopt.so.$version" ] || fail "no $lib/libfusedopt.so.$version"
[ "$(readlink "$lib/libfusedopt.so")" = "$soname" ] || fail "libfusedopt.so does not point to $soname"
[ "$(readlink "$lib/$soname")" = "libfusedopt.so.$version" ] || fail "$soname does not point to the library"
readelf -d "$lib/libfusedopt.so.$version" | grep -q "SONAME.*\[$soname\]" || fail "the soname is not $soname"
# No build or source paths in any installed text file, and no RPATH/RUNPATH
# into the build tree.
if grep -rIl -e "$build" -e "$src" "$prefix"; then fail "build paths in the installed files above"; fi
if readelf -d "$lib/libfusedopt.so.$version" | grep -E "R(UN)?PATH"; then fail "the installed library has an RPATH"; fi
[ -f "$lib/cmake/fusedopt/fusedoptConfigVersion.cmake" ] || fail "no fusedoptConfigVersion.cmake"
# BSD-3-Clause: binary redistributions carry the notice
cmp -s "$src/LICENSE" "$prefix/share/doc/fusedopt/LICENSE" || fail "LICENSE is not installed as share/doc/fusedopt/LICENSE"
# the header's version is the one the build gave the library and the package
hdr="$(sed -n 's/^#define FO_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$/\2/p' "$prefix/include/fusedopt.h" | paste -sd.)"
[ "$hdr" = "$version" ] || fail "the installed header says $hdr, the build $version"
needed="$(readelf -d "$lib/libfusedopt.so.$version" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
echo "consumer: $soname needs: $needed"
if [ "$cuda" = 0 ]; then
  case "$needed" in *cuda* | *nccl*) fail "a build without CUDA needs $needed" ;; esac
  if nm "$lib/libfusedopt.a" | grep -E " U (cuda|nccl|__cxa|_Z)"; then
    fail "the CPU-only archive refers to CUDA, NCCL or the C++ runtime"
  fi
fi
[ "$nccl" = 1 ] || case "$needed" in *nccl*) fail "a build without NCCL needs $needed" ;; esac

# What must not reach a consumer of the shared library.
private_re='fopenmp|cuda|nccl|gomp|stdc\+\+'
run() { # BINARY: runs it against the installed library only
  local args=()
  [ "$cuda" = 0 ] && args=(--no-cuda)
  LD_LIBRARY_PATH="$lib" "$@" "${args[@]}" || fail "$* failed"
}

# ---- CMake: find_package(fusedopt), each target, as C and as C++
for lang in C CXX; do
  for target in fusedopt::fusedopt fusedopt::fusedopt_static; do
    dir="$tmp/cmake-$lang-${target#fusedopt::}"
    cmake -S "$src/tests/consumer" -B "$dir" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
      -DFO_LANG="$lang" -DFO_TARGET="$target" -DFO_VERSION="$major.$minor" >"$dir.log" 2>&1 ||
      { cat "$dir.log" >&2; fail "configuring the $lang consumer of $target"; }
    cmake --build "$dir" >>"$dir.log" 2>&1 || { cat "$dir.log" >&2; fail "building the $lang consumer of $target"; }
    commands="$(ninja -C "$dir" -t commands consumer)"
    if [ "$target" = fusedopt::fusedopt ]; then
      if grep -Eo -- "$private_re" <<<"$commands" | sort -u | grep .; then
        echo "$commands" >&2
        fail "the shared target leaks the private dependencies above into its consumer"
      fi
    else
      if readelf -d "$dir/consumer" | grep -q "libfusedopt"; then fail "the static consumer needs libfusedopt.so"; fi
    fi
    run "$dir/consumer"
  done
done

# ---- pkg-config, from C: the shared library, then the archive
export PKG_CONFIG_PATH="$lib/pkgconfig"
flags="$(pkg-config --cflags --libs fusedopt)"
if grep -Eo -- "$private_re" <<<"$flags" | grep .; then fail "pkg-config --libs fusedopt leaks: $flags"; fi
cc -std=c11 "$src/tests/consumer/main.c" $flags -o "$tmp/pc-shared"
run "$tmp/pc-shared"
# the same with the RUNPATH docs/install.md suggests: it starts without
# LD_LIBRARY_PATH (the installed library has no RPATH of its own)
cc -std=c11 "$src/tests/consumer/main.c" $flags -Wl,-rpath,"$(pkg-config --variable=libdir fusedopt)" \
  -o "$tmp/pc-rpath"
no_cuda=()
[ "$cuda" = 0 ] && no_cuda=(--no-cuda)
env -u LD_LIBRARY_PATH "$tmp/pc-rpath" "${no_cuda[@]}" || fail "the consumer linked with -rpath did not start"
# --static: everything the archive needs (Libs.private); -Bstatic makes the
# linker take libfusedopt.a although the .so sits beside it.
static_flags="$(pkg-config --static --cflags --libs fusedopt)"
echo "consumer: pkg-config --static --libs fusedopt: $static_flags"
static_flags="${static_flags/-lfusedopt/-Wl,-Bstatic -lfusedopt -Wl,-Bdynamic}"
cc -std=c11 "$src/tests/consumer/main.c" $static_flags -o "$tmp/pc-static"
if readelf -d "$tmp/pc-static" | grep -q "libfusedopt"; then fail "the pkg-config --static consumer needs libfusedopt.so"; fi
run "$tmp/pc-static"

# ---- the MPI glue, when the build made it: find_package(fusedopt
# COMPONENTS mpi) and pkg-config fusedopt_mpi with the MPI compiler
# wrapper, each run as two ranks (Open MPI's flags as in tests/mpi)
mpi="none"
if compgen -G "$build/mpi/libfusedopt_mpi.so*" >/dev/null; then
  [ -f "$lib/libfusedopt_mpi.so.$version" ] || fail "no $lib/libfusedopt_mpi.so.$version"
  [ -f "$lib/pkgconfig/fusedopt_mpi.pc" ] || fail "no fusedopt_mpi.pc"
  mpiexec="$(sed -n 's/^MPIEXEC_EXECUTABLE:FILEPATH=//p' "$build/CMakeCache.txt")"
  mpicc="$(sed -n 's/^MPI_C_COMPILER:FILEPATH=//p' "$build/CMakeCache.txt")"
  mpi_flags=(-np 2)
  if "$mpiexec" --version 2>/dev/null | grep -qE "Open MPI|OpenRTE"; then mpi_flags+=(--oversubscribe); fi
  run_ranks() { # BINARY: two ranks against the installed libraries
    env LD_LIBRARY_PATH="$lib" OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 \
      OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none \
      timeout 120 "$mpiexec" "${mpi_flags[@]}" "$1" || fail "$1 failed under $mpiexec"
  }
  dir="$tmp/cmake-mpi"
  cmake -S "$src/tests/consumer" -B "$dir" -G Ninja -DCMAKE_PREFIX_PATH="$prefix" \
    -DFO_TARGET=fusedopt::fusedopt_mpi -DFO_VERSION="$major.$minor" >"$dir.log" 2>&1 ||
    { cat "$dir.log" >&2; fail "configuring the consumer of fusedopt::fusedopt_mpi"; }
  cmake --build "$dir" >>"$dir.log" 2>&1 || { cat "$dir.log" >&2; fail "building the MPI consumer"; }
  run_ranks "$dir/consumer"
  mpi_pc="$(pkg-config --cflags --libs fusedopt_mpi)"
  echo "consumer: pkg-config --libs fusedopt_mpi: $mpi_pc"
  "$mpicc" -std=c11 "$src/tests/consumer/mpi_main.c" $mpi_pc -o "$tmp/pc-mpi"
  run_ranks "$tmp/pc-mpi"
  mpi="find_package and pkg-config"
fi
echo "consumer: shared and static, find_package (C, C++) and pkg-config (C) all work" \
  "(CUDA $cuda, NCCL $nccl; MPI glue: $mpi)"
