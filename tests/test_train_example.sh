#!/usr/bin/env bash
# End-to-end checks of examples/train (registered in examples/CMakeLists.txt).
#
#   test_train_example.sh CASE TRAIN_BINARY SOURCE_DIR
#
# CASE is one of
#   cpu      training on the CPU path: the default run reaches >= 95%
#            validation accuracy, a short run's loss falls, the CSV and the
#            reported learning rates agree with the schedule
#   fp16     bf16/fp16 parameters with loss scaling, and clipping
#   compare  --compare: one table, one CSV per optimizer
#   bowl     the quadratic bowl against closed forms (SGD, heavy ball,
#            Nesterov) and an independent Adam reference written here in awk
#   errors   bad flags and bad data files: non-zero exit, one line on stderr
#   gpu      the CUDA path, eager and as a CUDA graph, against the CPU path;
#            exits 77 (skipped) without a usable GPU
set -euo pipefail

case_name=$1
train=$2
src=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# The value of key=value on the RESULT line of a log (the first one whose
# opt= matches $3 when given).
result_field() {
  local log=$1 key=$2 opt=${3:-}
  grep '^RESULT' "$log" | grep -- "opt=${opt}" | head -1 | tr ' ' '\n' |
    sed -n "s/^$key=//p"
}

# awk-evaluated condition on numbers, e.g. check "$acc >= 0.95" "message".
check() {
  awk "BEGIN { exit !($1) }" || fail "$2"
}

run_train() { # LOG ARGS...: runs train, keeping its output in LOG
  local log=$1
  shift
  local rc=0
  "$train" "$@" >"$log" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || { cat "$log" >&2; fail "train $* exited $rc"; }
}

# expect_diverged LOG ARGS...: a run that diverges exits 0 and says so in
# one line on stderr (stdout in LOG, stderr in LOG.err).
expect_diverged() {
  local log=$1 rc=0
  shift
  "$train" "$@" >"$log" 2>"$log.err" || rc=$?
  [ "$rc" -eq 0 ] || { cat "$log.err" >&2; fail "train $* exited $rc, want 0"; }
  [ "$(wc -l <"$log.err")" -eq 1 ] && grep -q '^train: the run diverged: ' "$log.err" ||
    { cat "$log.err" >&2; fail "train $* should warn 'train: the run diverged: ...' on stderr"; }
  echo "  $* -> $(cat "$log.err")"
}

# ------------------------------------------------------------------ cpu

case_cpu() {
  local log=$tmp/default.log out=$tmp/out
  run_train "$log" --device cpu --out "$out" --no-plot
  local acc
  acc=$(result_field "$log" val_acc)
  check "$acc >= 0.95" "the default run reached $acc validation accuracy, want >= 0.95"
  grep -q "^curves: $out/train_adamw.csv" "$log" || fail "the run does not say where the CSV is"
  echo "default run: validation accuracy $acc"

  log=$tmp/short.log
  run_train "$log" --device cpu --epochs 6 --layers 1 --hidden 64 --opt adam --lr 0.003 \
    --schedule constant --warmup 0 --out "$out" --no-plot
  local first final steps
  first=$(result_field "$log" first_loss)
  final=$(result_field "$log" final_loss)
  steps=$(result_field "$log" steps)
  acc=$(result_field "$log" val_acc)
  check "$final < $first / 3" "the loss fell only from $first to $final"
  check "$acc >= 0.93" "6 epochs reached $acc validation accuracy, want >= 0.93"
  check "$steps == 6 * int(1438 / 64)" "ran $steps steps, want 6 epochs of 22"
  [ "$(grep -c '^epoch ' "$log")" -eq 6 ] || fail "want one progress line per epoch"
  local csv=$out/train_adam.csv
  [ "$(wc -l <"$csv")" -eq 7 ] || fail "$csv should hold a header and 6 epochs"
  head -1 "$csv" | grep -q '^epoch,step,train_loss,val_acc,lr,loss_scale,skipped,samples_per_s$' ||
    fail "unexpected CSV header in $csv"
  # Every epoch's loss below the first's; lr constant at the base lr.
  awk -F, 'NR == 2 { first = $3 } NR > 2 && $3 >= first { bad = 1 }
           NR > 1 && ($5 < 0.003 * (1 - 1e-6) || $5 > 0.003 * (1 + 1e-6)) { bad = 1 }
           END { exit bad }' "$csv" || fail "losses or learning rates in $csv are off"

  # Warmup + cosine: the reported lr is lr * factor of the last step.
  log=$tmp/cosine.log
  run_train "$log" --device cpu --epochs 4 --layers 1 --hidden 32 --lr 0.01 --warmup 30 \
    --out "$out" --no-plot
  awk -F, -v lr=0.01 -v W=30 -v T=88 '
    NR > 1 { k = $2 - 1   # the factor of the step that took the count to $2
             f = k < W ? (k + 1) / W : 0.5 * (1 + cos(3.141592653589793 * (k - W) / (T - W)))
             if ($5 > lr * f * (1 + 1e-4) + 1e-9 || $5 < lr * f * (1 - 1e-4) - 1e-9) bad = 1 }
    END { exit bad }' "$out/train_adamw.csv" || fail "the lr column does not follow warmup + cosine"

  # step, restarts and cyclic: exactly the segments docs/train.md names
  # over the D = T - W steps (periods of ceil(D/3), ceil(D/4)); D = 86
  # here, where periods rounded down start another one in the last steps.
  local kind
  for kind in step restarts cyclic; do
    run_train "$log" --device cpu --epochs 4 --layers 1 --hidden 32 --lr 0.01 --warmup 2 \
      --schedule $kind --out "$out" --no-plot
    awk -F, -v lr=0.01 -v W=2 -v D=86 -v kind=$kind '
      function ceil_div(a, b) { return int((a + b - 1) / b) }
      NR > 1 { k = $2 - 1; j = k - W
               if (k < W) f = (k + 1) / W
               else if (kind == "step") f = 0.1 ^ int(j / ceil_div(D, 3))
               else if (kind == "restarts") { n = ceil_div(D, 3)
                                              f = 0.5 * (1 + cos(3.141592653589793 * (j % n) / n)) }
               else { n = ceil_div(D, 4); x = (j % (2 * n)) / n
                      f = 0.1 + 0.9 * (x <= 1 ? x : 2 - x) }
               if ($5 > lr * f * (1 + 1e-4) + 1e-9 || $5 < lr * f * (1 - 1e-4) - 1e-9) {
                 printf "epoch %d (step %d): lr %s, want %.6g\n", $1, $2, $5, lr * f; bad = 1 } }
      END { exit bad }' "$out/train_adamw.csv" || fail "the lr column does not follow --schedule $kind"
  done

  # Far too large a learning rate: NaN losses, a warning, exit 0.
  expect_diverged "$tmp/diverged.log" --device cpu --opt sgd --lr 1e6 --epochs 2 --layers 1 \
    --hidden 16 --out "$out" --no-plot
  grep -q '^RESULT .*final_loss=-\?nan' "$tmp/diverged.log" || fail "the diverged run's loss is not NaN"
  echo "ok: cpu"
}

# ----------------------------------------------------------------- fp16

case_fp16() {
  local out=$tmp/out p log acc scale
  for p in bf16 fp16; do
    log=$tmp/$p.log
    run_train "$log" --device cpu --precision $p --epochs 8 --out "$out" --no-plot
    acc=$(result_field "$log" val_acc)
    scale=$(result_field "$log" loss_scale)
    check "$acc >= 0.93" "$p reached $acc validation accuracy, want >= 0.93"
    check "$scale >= 1" "$p reports loss scale $scale"
    grep -q "precision=$p" "$log" || fail "the RESULT line does not name $p"
    echo "$p: validation accuracy $acc, loss scale $scale"
  done
  # Clipping: SGD's steps scale with the gradient, so a tight clip slows
  # the first epoch down (Adam would hardly notice).
  local free clipped
  run_train "$tmp/free.log" --device cpu --opt sgd --epochs 8 --out "$out" --no-plot
  run_train "$tmp/clip.log" --device cpu --opt sgd --clip 1 --epochs 8 --out "$out" --no-plot
  free=$(result_field "$tmp/free.log" first_loss)
  clipped=$(result_field "$tmp/clip.log" first_loss)
  acc=$(result_field "$tmp/clip.log" val_acc)
  check "$clipped > $free + 0.01" "--clip 1 did not slow SGD's first epoch ($clipped vs $free)"
  check "$acc >= 0.9" "--clip 1 reached $acc validation accuracy"
  echo "ok: fp16"
}

# -------------------------------------------------------------- compare

case_compare() {
  local out=$tmp/out log=$tmp/compare.log opt acc
  run_train "$log" --device cpu --compare --epochs 8 --out "$out" --no-plot
  [ "$(grep -c '^RESULT' "$log")" -eq 10 ] || fail "--compare should report 10 optimizers"
  [ "$(wc -l <"$out/compare.csv")" -eq 11 ] || fail "compare.csv should hold 10 rows"
  for opt in sgd nesterov adam adamw lion adagrad rmsprop nadam lamb lars; do
    [ -s "$out/train_$opt.csv" ] || fail "no curves for $opt"
    grep -q "^$opt " "$log" || fail "the table has no row for $opt"
    acc=$(result_field "$log" val_acc "$opt ")
    check "$acc >= 0.88" "$opt reached $acc validation accuracy in 8 epochs"
  done
  [ -s "$out/compare.gp" ] || fail "no gnuplot script for the comparison"
  echo "ok: compare"
}

# ----------------------------------------------------------------- bowl

# Compares the x= of a RESULT line with expected values (space-separated).
check_x() {
  local log=$1 want=$2 what=$3 got
  got=$(result_field "$log" x | tr ',' ' ')
  awk -v got="$got" -v want="$want" -v what="$what" 'BEGIN {
    n = split(got, g, " "); m = split(want, w, " ")
    if (n != m) { print what ": " n " values, want " m; exit 1 }
    for (i = 1; i <= n; i++) {
      tol = 2e-5 * (w[i] < 0 ? -w[i] : w[i]) + 2e-6
      d = g[i] - w[i]; if (d < 0) d = -d
      if (d > tol) { printf "%s: x%d = %.9g, want %.9g\n", what, i, g[i], w[i]; exit 1 }
    }
  }' >&2 || fail "$what does not match its reference"
}

# Heavy-ball (nesterov=0) or Nesterov (1) SGD with PyTorch's buffer
# (buf_1 = g_1) on a_i x^2/2: (x_t, buf_t) = M (x_{t-1}, buf_{t-1}) with
#   heavy ball  M = [[1 - lr a, -lr mu], [a, mu]]
#   Nesterov    M = [[1 - lr a (1 + mu), -lr mu^2], [a, mu]]
# from buf_0 = 0, so x_T = (M^T)_00 x_0; M^T by repeated squaring.
momentum_reference() {
  awk -v A="$1" -v X="$2" -v lr="$3" -v mu="$4" -v T="$5" -v nesterov="$6" '
    function mul(P, Q, R,   r0, r1, r2, r3) {
      r0 = P[0]*Q[0] + P[1]*Q[2]; r1 = P[0]*Q[1] + P[1]*Q[3]
      r2 = P[2]*Q[0] + P[3]*Q[2]; r3 = P[2]*Q[1] + P[3]*Q[3]
      R[0] = r0; R[1] = r1; R[2] = r2; R[3] = r3
    }
    BEGIN {
      n = split(A, a, ","); split(X, x, ",")
      for (i = 1; i <= n; i++) {
        if (nesterov) { M[0] = 1 - lr*a[i]*(1 + mu); M[1] = -lr*mu*mu }
        else          { M[0] = 1 - lr*a[i];          M[1] = -lr*mu }
        M[2] = a[i]; M[3] = mu
        P[0] = 1; P[1] = 0; P[2] = 0; P[3] = 1
        for (t = T; t > 0; t = int(t / 2)) { if (t % 2) mul(P, M, P); mul(M, M, M) }
        printf "%s%.12g", (i > 1 ? " " : ""), P[0] * x[i]
      }
    }'
}

# Adam as torch.optim.Adam writes it, in double precision, independent of
# the library: m, v, bias corrections, p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps).
adam_reference() {
  awk -v A="$1" -v X="$2" -v lr="$3" -v T="$4" -v b1=0.9 -v b2=0.999 -v eps=1e-8 'BEGIN {
    n = split(A, a, ","); split(X, x, ",")
    for (i = 1; i <= n; i++) { m[i] = 0; v[i] = 0 }
    for (t = 1; t <= T; t++)
      for (i = 1; i <= n; i++) {
        g = a[i] * x[i]
        m[i] = b1 * m[i] + (1 - b1) * g
        v[i] = b2 * v[i] + (1 - b2) * g * g
        bc1 = 1 - b1 ^ t; bc2 = 1 - b2 ^ t
        x[i] -= lr / bc1 * m[i] / (sqrt(v[i]) / sqrt(bc2) + eps)
      }
    for (i = 1; i <= n; i++) printf "%s%.12g", (i > 1 ? " " : ""), x[i]
  }'
}

case_bowl() {
  local A=1,4,10,0.5 X=1,-2,0.5,3 log=$tmp/bowl.log traj=$tmp/traj.csv want
  # Plain SGD: x_i(t) = (1 - lr a_i)^t x_i(0) at every step of the trajectory.
  run_train "$log" --bowl --opt sgd --lr 0.05 --steps 40 --coeffs $A --start $X \
    --trajectory "$traj"
  want=$(awk -v A=$A -v X=$X 'BEGIN { n = split(A, a, ","); split(X, x, ",")
    for (i = 1; i <= n; i++) printf "%s%.12g", (i > 1 ? " " : ""), (1 - 0.05*a[i])^40 * x[i] }')
  check_x "$log" "$want" "SGD"
  [ "$(wc -l <"$traj")" -eq 42 ] || fail "the trajectory should hold a header and steps 0..40"
  awk -F, -v A=$A -v X=$X 'BEGIN { n = split(A, a, ","); split(X, x, ",") }
    NR > 1 { t = $1; f = 0
      for (i = 1; i <= n; i++) {
        w = (1 - 0.05*a[i])^t * x[i]; d = $(i + 2) - w; if (d < 0) d = -d
        if (d > 2e-5 * (w < 0 ? -w : w) + 2e-6) bad = 1
        f += 0.5 * a[i] * w * w }
      d = $2 - f; if (d < 0) d = -d; if (d > 1e-4 * f + 1e-9) bad = 1 }
    END { exit bad }' "$traj" || fail "the SGD trajectory leaves (1 - lr a)^t x0"

  run_train "$log" --bowl --opt sgd --momentum 0.9 --lr 0.02 --steps 60 --coeffs $A --start $X
  check_x "$log" "$(momentum_reference $A $X 0.02 0.9 60 0)" "heavy-ball momentum"

  run_train "$log" --bowl --opt nesterov --momentum 0.8 --lr 0.02 --steps 60 --coeffs $A \
    --start $X
  check_x "$log" "$(momentum_reference $A $X 0.02 0.8 60 1)" "Nesterov momentum"

  run_train "$log" --bowl --opt adam --lr 0.01 --steps 50 --coeffs $A --start $X
  check_x "$log" "$(adam_reference $A $X 0.01 50)" "Adam"

  # --coeffs alone starts from all ones, as many as the coefficients.
  run_train "$log" --bowl --coeffs 1,10
  run_train "$log" --bowl --opt sgd --lr 0.05 --steps 10 --coeffs 1,4,10
  check_x "$log" "$(awk 'BEGIN { printf "%.12g %.12g %.12g", 0.95^10, 0.8^10, 0.5^10 }')" \
    "SGD from the default start"

  expect_diverged "$tmp/diverged.log" --bowl --opt sgd --lr 1e6
  echo "ok: bowl (SGD, heavy ball, Nesterov, Adam, default start, divergence)"
}

# --------------------------------------------------------------- errors

# expect_error STATUS ARGS...: train must exit with STATUS and print exactly
# one line, starting "train: ", on stderr.
expect_error() {
  local want=$1 rc=0
  shift
  "$train" "$@" >"$tmp/out.txt" 2>"$tmp/err.txt" || rc=$?
  [ "$rc" -eq "$want" ] || { cat "$tmp/err.txt" >&2; fail "train $* exited $rc, want $want"; }
  [ "$(wc -l <"$tmp/err.txt")" -eq 1 ] && grep -q '^train: ' "$tmp/err.txt" ||
    { cat "$tmp/err.txt" >&2; fail "train $* should print one 'train: ' line on stderr"; }
  echo "  $* -> $(cat "$tmp/err.txt")"
}

case_errors() {
  local d=$tmp/data quick=(--device cpu --epochs 1 --out "$tmp/out" --no-plot)
  mkdir -p "$d"
  printf '1,2,3\n' >"$d/short.csv"
  zcat "$src/data/digits.csv.gz" | sed '5s/,[0-9]$/,12/' | gzip >"$d/label.csv.gz"
  zcat "$src/data/digits.csv.gz" | sed '9s/^0,/x,/' >"$d/field.csv"
  head -c 20000 "$src/data/digits.csv.gz" >"$d/truncated.csv.gz"
  : >"$d/empty.csv"
  head -c 3000 /bin/sh >"$d/binary.csv"
  echo "errors:"
  expect_error 2 --bogus
  expect_error 2 --lr
  expect_error 2 --lr abc
  expect_error 2 --lr -1
  expect_error 2 --epochs 0
  expect_error 2 --layers 9
  expect_error 2 --layers 0 --hidden 32
  grep -q -- '--hidden' "$tmp/err.txt" || fail "--layers 0 --hidden should name --hidden"
  expect_error 2 --opt adabelief
  grep -q 'sgd|nesterov|adam|adamw|lion|adagrad|rmsprop|nadam|lamb|lars,' "$tmp/err.txt" ||
    fail "--opt's message should list every optimizer"
  expect_error 2 --precision fp8
  expect_error 2 --device tpu
  expect_error 2 --val-frac 1.5
  expect_error 2 --seed -3
  expect_error 2 --seed " -1"
  expect_error 2 --graph --device cpu
  expect_error 2 --opt adam --momentum 0.9
  expect_error 2 --opt nesterov --momentum 0
  expect_error 2 --compare --lr 0.1
  expect_error 2 --compare --opt lion
  grep -q -- '--opt' "$tmp/err.txt" || fail "--compare --opt should name --opt"
  expect_error 2 --coeffs 1,2
  expect_error 2 --bowl --epochs 3
  expect_error 2 --bowl --coeffs 1,2 --start 1
  expect_error 2 --bowl --start 1,1,1
  expect_error 2 --bowl --coeffs 1,x --start 1,1
  expect_error 2 --bowl --coeffs -1,10
  grep -q '(0, ' "$tmp/err.txt" || fail "--coeffs -1,10: the message should give the open range"
  expect_error 2 --bowl --coeffs 0,10
  expect_error 2 --zero
  grep -q 'mpirun' "$tmp/err.txt" || fail "--zero in one process should say how to start ranks"
  expect_error 2 --no-plot=yes
  expect_error 1 --data "$tmp/no/such/digits.csv.gz" "${quick[@]}"
  expect_error 1 --data "$d" "${quick[@]}"
  expect_error 1 --data "$d/short.csv" "${quick[@]}"
  expect_error 1 --data "$d/label.csv.gz" "${quick[@]}"
  expect_error 1 --data "$d/field.csv" "${quick[@]}"
  expect_error 1 --data "$d/truncated.csv.gz" "${quick[@]}"
  expect_error 1 --data "$d/empty.csv" "${quick[@]}"
  expect_error 1 --data "$d/binary.csv" "${quick[@]}"
  expect_error 2 --batch 100000 "${quick[@]}"
  expect_error 2 --warmup 500 --epochs 2 --device cpu --no-plot --out "$tmp/out"
  expect_error 2 --bowl --steps 0 --schedule cosine
  grep -q -- '--steps gives 0' "$tmp/err.txt" || fail "--bowl --steps 0 should name --steps"
  : >"$tmp/a-file"
  expect_error 1 --out "$tmp/a-file" --device cpu --epochs 1
  expect_error 1 --bowl --trajectory "$tmp/no/such/dir/t.csv"
  # an --out with no room left for the file names (they were cut short)
  expect_error 1 --out "$tmp/$(printf 'd/%.0s' $(seq 2040))" --device cpu --epochs 1 --no-plot \
    >/dev/null
  grep -q -- '--out is too long' "$tmp/err.txt" || fail "a 4 KiB --out: $(cat "$tmp/err.txt")"
  [ ! -e "$tmp/d" ] || fail "a refused --out was created"
  # standard output that cannot be written (a full disk): the run failed
  if [ -w /dev/full ]; then
    local rc=0
    "$train" --bowl --steps 3 >/dev/full 2>"$tmp/err.txt" || rc=$?
    [ "$rc" -eq 1 ] && [ "$(wc -l <"$tmp/err.txt")" -eq 1 ] ||
      { cat "$tmp/err.txt" >&2; fail "train >/dev/full exited $rc, want 1 and one line"; }
    echo "  --bowl --steps 3 >/dev/full -> $(cat "$tmp/err.txt")"
  fi
  "$train" --help >"$tmp/help.txt" || fail "--help should exit 0"
  grep -q -- '--precision' "$tmp/help.txt" || fail "--help should list the flags"
  grep -q -- '--opt .*|lamb|lars' "$tmp/help.txt" || fail "--help should list every optimizer"
  echo "ok: errors"
}

# ------------------------------------------------------------------ gpu

case_gpu() {
  local rc=0 out=$tmp/out log=$tmp/probe.log
  "$train" --device cuda --epochs 1 --layers 1 --hidden 16 --out "$out" --no-plot \
    >"$log" 2>&1 || rc=$?
  if [ "$rc" -eq 3 ]; then
    echo "skipped: no usable CUDA device ($(tail -1 "$log"))"
    exit 77
  fi
  [ "$rc" -eq 0 ] || { cat "$log" >&2; fail "the CUDA path failed"; }
  local common=(--epochs 10 --out "$out" --no-plot) cpu_loss gpu_loss graph_loss acc
  run_train "$tmp/cpu.log" --device cpu "${common[@]}"
  run_train "$tmp/gpu.log" --device cuda "${common[@]}"
  run_train "$tmp/graph.log" --device cuda --graph "${common[@]}"
  cpu_loss=$(result_field "$tmp/cpu.log" first_loss)
  gpu_loss=$(result_field "$tmp/gpu.log" first_loss)
  graph_loss=$(result_field "$tmp/graph.log" final_loss)
  # Same seed, weights and batches: the first epoch's loss agrees with the
  # CPU path's up to fp32 summation order.
  check "($gpu_loss - $cpu_loss)^2 <= (0.01 * $cpu_loss)^2" \
    "first-epoch loss: GPU $gpu_loss, CPU $cpu_loss"
  # The graph replays the same kernels: the same run as eager.
  check "($graph_loss - $(result_field "$tmp/gpu.log" final_loss))^2 <= (1e-3 * $graph_loss)^2" \
    "--graph ends at loss $graph_loss, eager at $(result_field "$tmp/gpu.log" final_loss)"
  for log in "$tmp/gpu.log" "$tmp/graph.log"; do
    acc=$(result_field "$log" val_acc)
    check "$acc >= 0.95" "$(basename "$log" .log) reached $acc validation accuracy"
  done
  for p in bf16 fp16; do
    run_train "$tmp/$p.log" --device cuda --graph --precision $p "${common[@]}"
    acc=$(result_field "$tmp/$p.log" val_acc)
    check "$acc >= 0.93" "$p --graph reached $acc validation accuracy"
  done
  grep -h '^RESULT' "$tmp"/*.log
  echo "ok: gpu"
}

case "$case_name" in
  cpu | fp16 | compare | bowl | errors | gpu) "case_$case_name" ;;
  *) fail "unknown case '$case_name'" ;;
esac
