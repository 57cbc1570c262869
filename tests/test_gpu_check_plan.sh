#!/usr/bin/env bash
# The device call's plan, proven here (no GPU needed): scripts/gpu_check.sh
# --dry-run with the --parts list docs/gpu-verification.md tells the next
# device session to run must exit 0, print the build and every part it
# names, and leave no CSV behind; an unknown part is refused (exit 2).  A
# typo in the script or in the documented command then fails CI instead of
# a device minute.
#   test_gpu_check_plan.sh SOURCE_DIR
set -u
src=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

parts=$(sed -n "s/^ *--parts '\([^']*\)'$/\1/p" "$src/docs/gpu-verification.md" | head -1)
[ -n "$parts" ] || fail "no --parts '...' line in docs/gpu-verification.md"
echo "documented parts: $parts"
plan=$(OUT=$tmp/out bash "$src/scripts/gpu_check.sh" --dry-run --budget 420 --parts "$parts" \
  --build "$tmp/build" 2>&1) || fail "--dry-run exited $? ($plan)"
echo "$plan"
printf '%s\n' "$plan" | grep -q '^build  .*--target fusedopt ' || fail "no build line with its targets"
for spec in ${parts//,/ }; do
  name=${spec%%:*}
  case "$name" in
    tests) want='^tests-test_gpu_' ;;
    train) want='^train_example_gpu ' ;;
    bench) want='^bench-' ;;
    *) want="^$name " ;;
  esac
  printf '%s\n' "$plan" | grep -q "$want" || fail "part $name is not in the plan"
done
[ -z "$(find "$tmp/out" -name '*.csv')" ] || fail "the dry run left CSVs: $(ls "$tmp/out")"

err=$(OUT=$tmp/out2 bash "$src/scripts/gpu_check.sh" --dry-run --parts 'tests,bnech' --build "$tmp/build" 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "an unknown part exited $rc, want 2 ($err)"
printf '%s\n' "$err" | grep -q "unknown part 'bnech'" || fail "an unknown part said: $err"
echo "PASS"
