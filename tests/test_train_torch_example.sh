#!/usr/bin/env bash
# examples/train_torch.py on the CPU (issue #18's example): two epochs with
# --compare-torch, where fusedopt.torch.AdamW and torch.optim.AdamW train
# the same MLP from the same weights on the same batches.  Checks: both
# runs finish and write their curves (a header and one row per epoch), the
# parameters agree within fp32's tolerance (docs/numerics.md: the two
# differ by the order of operations only, about 5e-7 here), the two
# accuracies are the same and above chance, and a batch larger than the
# training set, a device it cannot use and other bad values are usage
# errors (exit 2, saying so), a data file it cannot read exits 1, never
# with a traceback; the lr column is the epoch's last step's.
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
# the lr column: the epoch's last step's, warmup min(22, 44 / 5) = 8 steps
# then cosine, as examples/train reports it
for run in fusedopt torch; do
  awk -F, -v lr=0.002 -v W=8 -v T=44 '
    NR > 1 { k = $2 - 1
             f = k < W ? (k + 1) / W : 0.5 * (1 + cos(3.141592653589793 * (k - W) / (T - W)))
             if ($5 > lr * f * (1 + 1e-4) + 1e-9 || $5 < lr * f * (1 - 1e-4) - 1e-9) {
               printf "epoch %d (step %d): lr %s, want %.6g\n", $1, $2, $5, lr * f; bad = 1 } }
    END { exit bad }' "$out/train_torch_$run.csv" || fail "$run's lr column is not its last step's"
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
# user errors: one line naming the value, never a traceback; usage errors
# exit 2, a data file it cannot read 1
: >"$out/a-file"
expect_error() { # RC ARGS...
  local want=$1
  shift
  err=$("$py" "$example" --epochs 1 --no-plot "$@" 2>&1)
  rc=$?
  [ "$rc" = "$want" ] || fail "$* exited $rc, want $want ($err)"
  ! printf '%s\n' "$err" | grep -q Traceback || fail "$* printed a traceback: $err"
  echo "  $* -> $(printf '%s\n' "$err" | tail -1)"
}
expect_error 2 --lr -1 --out "$out"
expect_error 2 --lr nan --out "$out"
expect_error 2 --wd -1 --out "$out"
expect_error 2 --batch 0 --out "$out"
printf '%s\n' "$err" | grep -q -- '--batch 0' || fail "--batch 0 should be named: $err"
expect_error 2 --device cpu:1 --out "$out"
expect_error 2 --out "$out/a-file"
expect_error 1 --data "$out/no-such-file.csv.gz" --out "$out"
printf '1,2,3\n' >"$out/short.csv"
expect_error 1 --data "$out/short.csv" --out "$out"
# plain CSV, as examples/train reads it
gzip -dc "$(dirname "$example")/../data/digits.csv.gz" >"$out/digits.csv"
"$py" "$example" --epochs 1 --no-plot --data "$out/digits.csv" --out "$out" >/dev/null 2>&1 ||
  fail "a plain CSV data file was refused"
echo "PASS"
