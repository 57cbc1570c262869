#!/usr/bin/env bash
# install_check.sh -- `pip install` of the package into a fresh venv, the
# way docs/python.md says, and the installed copy used from outside the
# source tree (CTest python_install; issue #18).
#
#   bash install_check.sh LIBFUSEDOPT PYTHON...
#
# The first PYTHON with venv, pip, setuptools (>= 61) and wheel is used.
# Its venv is made --without-pip (ensurepip is not needed: the
# interpreter's own pip, run by the venv's python, installs into it) and
# sees the interpreter's site-packages (--system-site-packages), so nothing
# is downloaded (--no-index --no-build-isolation).  The package is copied
# to a temporary directory first, with the library dropped inside it as a
# user ships one (docs/python.md, "next to the package"), so the source
# tree stays clean.  Then, from another directory and without
# FUSEDOPT_LIBRARY:
#   - `import fusedopt` resolves to the venv's site-packages, and loads the
#     library installed next to it (package data), not the build's;
#   - the distribution carries the LICENSE;
#   - a two-step AdamW on the CPU moves the weights;
#   - `pip uninstall` removes it.
# Exit 0, 1 on a failure, 77 (CTest's SKIP) when no PYTHON has the tools,
# saying what each lacks.
set -euo pipefail
lib=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)

py=
for cand in "$@"; do
  missing=
  for mod in venv pip setuptools wheel; do
    "$cand" -c "import $mod" >/dev/null 2>&1 || missing="$missing $mod"
  done
  if [ -z "$missing" ]; then
    py=$cand
    break
  fi
  echo "# $cand lacks:$missing"
done
if [ -z "$py" ]; then
  echo "SKIP: no python3 with venv, pip, setuptools and wheel (Debian: python3-venv python3-pip python3-setuptools python3-wheel)"
  exit 77
fi
echo "# $py"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/src" "$tmp/elsewhere"
# LICENSE is a link to the repository's: -L copies the file it names.  The
# package's sources only: its __pycache__ may be written by a test running
# beside this one (a .pyc renamed into place while cp reads the directory)
mkdir "$tmp/src/fusedopt"
cp -L "$here/pyproject.toml" "$here/setup.py" "$here/README.md" "$here/LICENSE" "$tmp/src/"
cp "$here"/fusedopt/*.py "$tmp/src/fusedopt/"
# without a library inside, the wheel is pure Python (setup.py)
"$py" -m pip wheel -q --no-deps --no-index --no-build-isolation -w "$tmp/pure" "$tmp/src"
pure=$(cd "$tmp/pure" && echo fusedopt-*.whl)
case "$pure" in
  *-py3-none-any.whl) echo "ok: without a library the wheel is $pure" ;;
  *) echo "FAIL: without a library the wheel is $pure, not py3-none-any"; exit 1 ;;
esac
rm -rf "$tmp/src/build"
# the real file, under the soname the package tries first
real=$(readlink -f "$lib")
soname=$(objdump -p "$real" | awk '$1 == "SONAME" { print $2 }')
cp "$real" "$tmp/src/fusedopt/${soname:-libfusedopt.so}"

# the interpreter's own pip, run by the venv's python: it installs there
"$py" -m venv --without-pip --system-site-packages "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --no-index --no-build-isolation "$tmp/src"

cd "$tmp/elsewhere"
env -u FUSEDOPT_LIBRARY -u PYTHONPATH "$tmp/venv/bin/python" - "$tmp/venv" <<'EOF'
import array
import os
import sys

venv = os.path.realpath(sys.argv[1])
import fusedopt

where = os.path.realpath(fusedopt.__file__)
assert where.startswith(venv + os.sep), "fusedopt imported from %s, not the venv" % where
lib = os.path.realpath(fusedopt.library_path())
pkg = os.path.dirname(where)
assert os.path.dirname(lib) == pkg, "library %s is not the one installed in %s" % (lib, pkg)
assert fusedopt.library_version() == fusedopt.__version__, (fusedopt.library_version(),
                                                            fusedopt.__version__)
# BSD-3-Clause: the installed distribution carries the notice
from importlib import metadata

dist = metadata.distribution("fusedopt")
notices = [f for f in dist.files or () if f.name.startswith("LICENSE")]
assert notices and "Redistribution and use" in notices[0].read_text(), (
    "no LICENSE in the installed distribution: %s" % sorted(str(f) for f in dist.files or ()))

# with the library inside, the wheel holds machine code: tagged for this
# platform, never py3-none-any (setup.py)
wheel_meta = dist.read_text("WHEEL") or ""
tags = [l.split(":", 1)[1].strip() for l in wheel_meta.splitlines() if l.startswith("Tag:")]
assert "Root-Is-Purelib: false" in wheel_meta and tags and all(
    t.startswith("py3-none-") and not t.endswith("-any") for t in tags), (
    "the wheel that bundles the library is tagged %s:\n%s" % (tags, wheel_meta))

w = array.array("f", [0.5, -0.25, 1.0, 2.0])
before = list(w)
with fusedopt.Optimizer([w], "adamw", lr=0.1, num_threads=1) as opt:
    for k in range(2):
        for i in range(len(w)):
            opt.grads[0][i] = 0.1 * (i + 1) * (1 if k == 0 else -1)
        opt.step()
moved = [abs(a - b) > 1e-4 for a, b in zip(w, before)]
assert all(moved), "the installed package's step left weights unchanged: %s" % list(w)
print("ok: fusedopt %s from %s, library %s, wheel %s" % (fusedopt.__version__, where, lib,
                                                       " ".join(tags)))
EOF

"$tmp/venv/bin/python" -m pip uninstall -q -y fusedopt
if env -u FUSEDOPT_LIBRARY -u PYTHONPATH "$tmp/venv/bin/python" -c "import fusedopt" 2>/dev/null; then
  echo "FAIL: fusedopt still importable after pip uninstall"
  exit 1
fi
echo "ok: pip uninstall removed it"
