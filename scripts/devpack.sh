#!/usr/bin/env bash
# Packs .devpack/: what a lent GPU machine lacks to build the test tier and
# the examples (it has CUDA, NCCL, CMake and ninja but no package registry,
# no pkg-config, no Criterion and no zlib headers): Criterion's headers and
# shared libraries with their runtime dependencies, and zlib's headers,
# unpacked from Debian packages, with an env.sh that points the build at
# them.  Run here, in the repository root; then carry .devpack in the device
# call and start its command with `source .devpack/env.sh` (which
# scripts/gpu_check.sh also does by itself).
set -euo pipefail
cd "$(git rev-parse --show-toplevel 2>/dev/null || dirname "$0"/..)"
grep -qxF '/.devpack/' .git/info/exclude 2>/dev/null || echo '/.devpack/' >>.git/info/exclude
rm -rf .devpack && mkdir -p .devpack/debs
pkgs="libcriterion-dev libcriterion3 libboxfort-dev libgit2-1.5 libnanomsg5 libhttp-parser2.9
      libmbedtls14 libmbedx509-1 libmbedcrypto7 libssh2-1 libffi8 libpcre2-8-0 zlib1g-dev zlib1g"
# shellcheck disable=SC2086
(cd .devpack/debs && apt-get download $pkgs >/dev/null 2>&1) || {
  apt-get update -qq >/dev/null 2>&1 && (cd .devpack/debs && apt-get download $pkgs >/dev/null)
}
for f in .devpack/debs/*.deb; do dpkg -x "$f" .devpack; done
rm -rf .devpack/debs .devpack/usr/share
# Absolute symlinks (libz.so -> /lib/...) would point outside the pack on
# the other machine: make every link into the pack relative.
find .devpack -type l | while read -r link; do
  target=$(readlink "$link")
  case "$target" in
    /*) [ -e ".devpack$target" ] && ln -sfn "$(realpath --relative-to="$(dirname "$link")" ".devpack$target")" "$link" ;;
  esac
done
find .devpack -name '*.pc' -exec sed -i -e "s|^prefix=.*|prefix=\${pcfiledir}/../../..|" \
  -e '/^Requires.private:/d' -e '/^Libs.private:/d' {} +
cat >.devpack/env.sh <<'ENV'
# source .devpack/env.sh   (from the project's root, on the GPU machine)
export DEVPACK="$PWD/.devpack"
export CMAKE_PREFIX_PATH="$DEVPACK/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PKG_CONFIG_PATH="$DEVPACK/usr/lib/x86_64-linux-gnu/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export CPATH="$DEVPACK/usr/include${CPATH:+:$CPATH}"
export LIBRARY_PATH="$DEVPACK/usr/lib/x86_64-linux-gnu${LIBRARY_PATH:+:$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$DEVPACK/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ENV
echo "packed: $(du -sh .devpack | cut -f1) in .devpack/ (carry it; then: source .devpack/env.sh)"
