#!/usr/bin/env bash
# examples/train_torch.py on the CPU (issue #18's example): two epochs with
# --compare-torch, where fusedopt.torch.AdamW and torch.optim.AdamW train
# the same MLP from the same weights on the same batches.  Checks: both
# runs finish and write their curves (a header and one row per epoch), the
# parameters agree within fp32's tolerance (docs/numerics.md: the two
# differ by the order of operations only, about 5e-7 here), the two
# accuracies are the same and above chance, and a batch larger than the
# training set or a device it cannot use is a usage error (exit 2, saying
# so), not a crash.
# Usage: test_train_torch_example.sh PYTHON EXAMPLE   (exit 77: no torch)
set -u
py=$1 example=$2
if ! "$py" -c 'import torch' 2>/dev/null; then
  echo "SKIP: $py cannot import torch"
  exit 77
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

log=$("$py" "$example" --compare-torch --epochs 2 --no-plot --out "$out" 2>&1) ||
  fail "the run exited $? ($log)"
echo "$log"
for run in fusedopt torch; do
  csv=$out/train_torch_$run.csv
  [ -f "$csv" ] || fail "no $csv"
  [ "$(wc -l <"$csv")" = 3 ] || fail "$csv has $(wc -l <"$csv") lines, want a header and 2 rows"
  head -1 "$csv" | grep -q '^epoch,step,train_loss,val_acc,' || fail "$csv: header $(head -1 "$csv")"
done
diff=$(printf '%s\n' "$log" | sed -n 's/^largest parameter difference, fusedopt vs torch.optim.AdamW: //p')
[ -n "$diff" ] || fail "no parameter difference line"
awk -v d="$diff" 'BEGIN { exit !(d + 0 == d && d < 1e-5) }' ||
  fail "parameters differ by $diff (want < 1e-5)"
accs=$(printf '%s\n' "$log" | sed -n 's/^done: \(fusedopt\|torch\) AdamW reached \([0-9.]*\)% .*/\2/p')
[ "$(printf '%s\n' "$accs" | wc -l)" = 2 ] || fail "want two 'done:' lines, got: $accs"
[ "$(printf '%s\n' "$accs" | sort -u | wc -l)" = 1 ] || fail "the accuracies differ: $accs"
awk -v a="$(printf '%s\n' "$accs" | head -1)" 'BEGIN { exit !(a > 30) }' ||
  fail "validation accuracy $accs% after two epochs (chance is 10%)"

err=$("$py" "$example" --batch 100000 --epochs 1 --no-plot --out "$out" 2>&1)
rc=$?
[ "$rc" = 2 ] || fail "--batch 100000 exited $rc, want 2 ($err)"
printf '%s\n' "$err" | grep -q 'larger than the .* training rows' || fail "--batch 100000 said: $err"
# devices: one torch does not know, one fusedopt has no executor for, and
# CUDA where torch sees none (skipped where it does)
for dev in bogus meta $("$py" -c 'import torch; print("" if torch.cuda.is_available() else "cuda")'); do
  err=$("$py" "$example" --device "$dev" --epochs 1 --no-plot --out "$out" 2>&1)
  rc=$?
  [ "$rc" = 2 ] || fail "--device $dev exited $rc, want 2 ($err)"
  printf '%s\n' "$err" | grep -q -- "--device $dev: " || fail "--device $dev said: $err"
done
echo "PASS"
