#!/usr/bin/env bash
# The README's C example, as written, against the library just built: its
# first ```c block is compiled (C11, -Wall -Wextra -pedantic -Werror), its
# #include lines at file scope and the rest as the body of a function whose
# parameters are the names the example leaves to the reader (n0, p0, g0,
# ..., stream, steps); linked with libfusedopt, so every function it names
# must be exported; and run with no tensors to step: it must take its
# documented error path (fo_optimizer_create fails, fo_last_error() says
# why, the example returns 1).  A README whose example no longer builds
# fails here.
#   test_readme_example.sh SOURCE_DIR LIBFUSEDOPT C_COMPILER
set -euo pipefail
src=$1 lib=$2 cc=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk '/^```c$/ { inside = 1; next } /^```$/ { if (inside) exit } inside' "$src/README.md" >"$tmp/example.c"
[ -s "$tmp/example.c" ] || { echo "FAIL: README.md has no \`\`\`c block"; exit 1; }
params='int64_t n0, int64_t n1, void *p0, void *g0, void *p1, void *g1, fo_stream_t stream, int steps'
{
  grep '^#include' "$tmp/example.c"
  cat <<C
#include <stdint.h>
#include <stdio.h>
#include <string.h>
static int readme_example($params) {
C
  grep -v '^#include' "$tmp/example.c"
  cat <<'C'
  return 0;
}
int main(void) {
  /* no tensors: create must fail and say why, whatever the machine */
  int rc = readme_example(0, 0, NULL, NULL, NULL, NULL, NULL, 1);
  printf("readme example: returned %d, fo_last_error: %s\n", rc, fo_last_error());
  return rc == 1 && strlen(fo_last_error()) > 0 ? 0 : 1;
}
C
} >"$tmp/readme.c"
if ! "$cc" -std=c11 -Wall -Wextra -pedantic -Werror -I"$src/include" "$tmp/readme.c" "$lib" \
  -Wl,-rpath,"$(dirname "$lib")" -o "$tmp/readme"; then
  echo "FAIL: the README's example does not build; as compiled:"
  cat -n "$tmp/readme.c"
  exit 1
fi
"$tmp/readme"
