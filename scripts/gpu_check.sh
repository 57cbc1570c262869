#!/usr/bin/env bash
# The GPU check in one device call: build once, then correctness, performance
# and compute-sanitizer parts in priority order, each under its own timeout,
# inside a time budget.  Written for a lent GPU machine (15 minutes of device
# time per session, cold start included: one call of ~8 minutes and one of
# ~4); runs anywhere, where the GPU parts skip themselves.
#
#   bash scripts/gpu_check.sh [--budget SECONDS] [--parts LIST] [--build DIR]
#                             [--dry-run]
#
#   --budget S   seconds for everything, the build included (default 420).
#                A part starts only when its minimum still fits, and runs
#                under min(its own limit, what is left).  Only the targets
#                the chosen parts run are built.
#   --parts L    comma-separated parts to run (default: all, in this order):
#                  tests    every tests/test_gpu_* binary (--verbose --jobs=1),
#                           the 2^31-element test left for `big`
#                  train    train_example_gpu (tests/test_train_example.sh gpu)
#                  demo     examples/train on the GPU: fp32, bf16 + master
#                           weights + loss scaling, --graph; the CPU for scale
#                  torchtests  fusedopt.torch's CUDA tests
#                           (python/tests/test_torch.py, class Cuda, and
#                           test_torch_contract.py's Cuda* classes): the
#                           eager ones, then the graph captures in a
#                           process of their own (a fault there is sticky);
#                           then the Python CPU tests under the machine's
#                           torch
#                  big      gpu/tensor_past_2_31_elements
#                  bench    bench on lists a, c, d, b (4 layers) and m (the
#                           4-tensor MLP's latency): AdamW, SGD momentum,
#                           Lion in fp32 and bf16-master; `new`: LAMB,
#                           LARS, AdaGrad, RMSprop, NAdam on list a (eager);
#                           aclip: AdamW on list a with clipping and loss
#                           scaling on (fp32-clip, bf16-master-clip);
#                           m0 and d0: lists m and d with every step through
#                           the prepare kernel (FUSEDOPT_HOST_SCALARS=0)
#                  variants bench/step_variants: the step kernel's shapes
#                           (chunk, ILP, blocks per SM) side by side on
#                           lists a and d, with a bit-identity check
#                  torch    scripts/bench_torch.py on lists a, mlp, d (and,
#                           named as LISTclip, a list with clipping:
#                           torch:aclip)
#                  torchdebug  (only when named) the illegal address seen
#                           2026-12-04: torch alone, a graph replayed after
#                           its optimizer is freed (should fault) or kept;
#                           bench_torch.py's AdamW fp32 with graphs on list
#                           mlp, on lists a and mlp (CUDA_LAUNCH_BLOCKING=1),
#                           each failing (3) if a capture did, and on mlp
#                           under memcheck; every step's whole output in
#                           logs/torchdebug_*.log
#                  torchtrain  scripts/bench_torch_train.py: GPT-2 small's
#                           whole training step (forward, backward, AdamW)
#                           with fusedopt.torch and torch's fused AdamW, in
#                           fp32, bf16 autocast and bf16-master; 10 steps;
#                           then examples/train_torch.py on the GPU in bf16
#                           with --compare-torch (5 epochs)
#                  memcheck compute-sanitizer memcheck, one test per kernel
#                           family; racecheck, initcheck the same
#                PART:FILTER narrows a part, for a re-run of what failed:
#                tests:GLOB (a Criterion --filter), bench:LISTS (a, c, d,
#                b, m, new, aclip, m0, d0), variants:LISTS (a, d) and
#                torch:LISTS (a, mlp, d, b, c, aclip, ...; lists joined by
#                '+': bench:a+d), and
#                memcheck:GLOB (racecheck, initcheck alike; alternatives
#                joined by '|': 'memcheck:gpu/arena|*graph*').
#   --build DIR  build directory (default build-gpu)
#   --dry-run    print the plan (parts, limits, commands) and run nothing
#
# Output, in $OUT (the lent machine's output folder; at most 8 files come
# back from it) or DIR/check when OUT is unset:
#   summary.txt    one line per part as it ends, the table at the end
#   info.txt       device, driver, toolkit, commit
#   logs.tar.gz    every finished part's log and CSV, re-packed after each
#   current.log    the log of the part in progress (what a kill leaves)
#   bench_gpu.csv  bench's rows, every list (header once)
#   torch_gpu.csv  scripts/bench_torch.py's rows
#   torch_train_gpu.csv  scripts/bench_torch_train.py's rows
#
# On a lent machine: carry .devpack (scripts/devpack.sh makes it: Criterion
# and zlib, which the machine lacks) and start the command with
# `source .devpack/env.sh`.  Without Criterion the tests are not built (a
# warning in summary.txt) and the parts that need none still run.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

budget=420
parts_arg=all
build=build-gpu
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget=$2; shift 2 ;;
    --parts) parts_arg=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (--help)" >&2; exit 2 ;;
  esac
done
case "$budget" in '' | *[!0-9]*) echo "gpu_check: --budget needs seconds" >&2; exit 2 ;; esac

start=$(date +%s)
deadline=$((start + budget))
out=${OUT:-$build/check}
work=$build/check-work # logs and CSVs, bundled into $out/logs.tar.gz
rm -rf "$work/logs" # an earlier call's, on a machine kept warm
mkdir -p "$out" "$work/logs"
[ -x /usr/local/cuda/bin/nvcc ] && export PATH="/usr/local/cuda/bin:$PATH"
[ -f .devpack/env.sh ] && [ -z "${DEVPACK:-}" ] && source .devpack/env.sh
summary=$out/summary.txt
: >"$summary"

all_parts="tests train demo torchtests big bench variants torch torchdebug torchtrain memcheck racecheck initcheck"
# Each part: the seconds it needs to be worth starting, and its own limit.
need_of() {
  case "$1" in
    tests) echo 40 ;; train*) echo 30 ;; demo) echo 20 ;; torchtests) echo 30 ;; big) echo 60 ;;
    bench) echo 40 ;; variants) echo 20 ;; torch) echo 40 ;; torchtrain) echo 60 ;;
    torchdebug) echo 80 ;; *) echo 25 ;;
  esac
}
limit_of() {
  case "$1" in
    tests) echo 90 ;; train*) echo 120 ;; demo) echo 90 ;; torchtests) echo 120 ;; big) echo 240 ;;
    bench) echo 180 ;; variants) echo 90 ;; torch) echo 150 ;; torchtrain) echo 150 ;; *) echo 120 ;;
  esac
}

# The parts asked for, in priority order, each with an optional filter
# (no globbing of the filters while they are split).
set -f
declare -A filter_of=()
selected=()
for p in $all_parts; do
  for spec in ${parts_arg//,/ }; do
    name=${spec%%:*}
    if { [ "$spec" = all ] && [ "$p" != torchdebug ]; } || [ "$name" = "$p" ]; then
      selected+=("$p")
      [ "$spec" != "$name" ] && filter_of[$p]=${spec#*:}
      break
    fi
  done
done
for spec in ${parts_arg//,/ }; do
  case " all $all_parts " in *" ${spec%%:*} "*) ;; *)
    echo "gpu_check: unknown part '${spec%%:*}' (--help)" >&2; exit 2 ;;
  esac
done
set +f

left() { echo $((deadline - $(date +%s))); }
note() { echo "$*" | tee -a "$summary"; }
# written aside, then renamed: a kill while packing leaves the last bundle
bundle() {
  tar -czf "$out/logs.tar.gz.part" -C "$work" logs 2>/dev/null &&
    mv -f "$out/logs.tar.gz.part" "$out/logs.tar.gz"
}
# watched LIMIT LOG CMD...: CMD under `timeout LIMIT`, its output in LOG and
# current.log.  In the background, waited for: bash runs a trap only once
# the foreground command has ended, and `timeout` puts CMD in a process
# group of its own, out of reach of a signal to the script's group; a
# `wait` is cut short by the signal, and the trap stops CMD through its
# timeout (which passes the signal on to CMD's whole group).
watched() {
  local limit=$1 log=$2 bg
  shift 2
  { timeout -k 5 "$limit" bash -c '"$@"' _ "$@" 2>&1 &
    echo $! >"$work/watched.pid"
    wait $!; } | tee "$out/current.log" >"$log" &
  bg=$!
  wait "$bg" # the pipeline's status, pipefail: the command's
  local rc=$?
  rm -f "$work/watched.pid" # a signal between parts has nothing to stop
  return "$rc"
}
# The device tool stops a call that runs past its limit: keep what is done.
on_signal() {
  local pid
  pid=$(cat "$work/watched.pid" 2>/dev/null)
  if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do # up to 2 s for the part to go
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
  fi
  note "== stopped by a signal after $(($(date +%s) - start))s"
  bundle
  exit 143
}
trap on_signal TERM INT

# part NAME CMD...: run CMD under the part's limit (or what is left), its
# output in logs/NAME.log and current.log; one line in the summary.
part() {
  local name=$1; shift
  local need limit l rc t0
  need=$(need_of "${name%%-*}")
  limit=$(limit_of "${name%%-*}")
  l=$(left)
  if [ "$l" -lt "$need" ]; then
    note "$(printf '%-34s skipped: needs %ss, %ss left' "$name" "$need" "$l")"
    return 99
  fi
  [ "$l" -lt "$limit" ] && limit=$l
  if [ "$dry" = 1 ]; then
    printf '%-34s limit %4ss: %s\n' "$name" "$limit" "$*"
    return 0
  fi
  t0=$(date +%s)
  # bash -c: CMD may be one of the exported functions below
  watched "$limit" "$work/logs/$name.log" "$@"
  rc=$?
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "== killed at its limit of ${limit}s" >>"$work/logs/$name.log"
  note "$(printf '%-34s exit %3s  %4ss  %s' "$name" "$rc" "$(($(date +%s) - t0))" "$(verdict "$work/logs/$name.log")")"
  bundle
  return "$rc"
}

# What a log says, in one line: Criterion's synthesis and skips, a shell
# test's ok/FAIL, bench's failed checks, compute-sanitizer's error summary
# (memcheck's and initcheck's errors, racecheck's hazards).
verdict() {
  local log=$1 syn skips
  syn=$(grep -ah 'Synthesis:' "$log" | tail -1 | sed 's/.*Synthesis: //; s/ | /, /g')
  # --verbose lists the tests a --filter left out as "Test is disabled"
  skips=$(grep -a '\[SKIP\]' "$log" | grep -vc 'Test is disabled')
  if grep -aq '^== [a-z]*check .*: exit' "$log"; then
    awk '/^== [a-z]*check .*: exit/ { runs++; if ($NF != 0) bad++ }
         /ERROR SUMMARY:/ { errs += $(NF - 1) }
         /RACECHECK SUMMARY:/ { for (i = 1; i < NF; i++) if ($i == "SUMMARY:") errs += $(i + 1) }
         /^\[PASS\]/ { pass++ } /^\[FAIL\]/ { fail++ }
         END { printf "sanitizer runs %d (tests passed %d, failed %d), exit != 0: %d, errors or hazards reported: %d\n",
               runs, pass, fail, bad, errs }' "$log"
  elif grep -aqE '^Ran [0-9]+ tests? in' "$log"; then # unittest
    grep -aE '^Ran [0-9]+ tests? in|^OK|^FAILED' "$log" | sed 's/ in [0-9.]*s//' | tr '\n' ' '
    echo
  elif [ -n "$syn" ]; then
    echo "$syn, Skipped: $skips"
  elif grep -aq '^torchdebug: ' "$log"; then
    grep -a '^torchdebug: ' "$log" | tail -1 | cut -c13-
  else
    grep -ahE 'correctness checks FAILED|^ok: |FAIL|skipped|no usable|Error|error' "$log" |
      head -2 | cut -c1-110 | tr '\n' ';'
  fi
}

# ------------------------------------------------------------------ build
{
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  echo "cores: $(nproc)"
  python3 -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1
} >"$out/info.txt" 2>&1
[ "$dry" = 1 ] || cat "$out/info.txt"

# NCCL: the toolkit's, else the one PyTorch's wheels bring (nvidia-nccl),
# laid out as FindNCCL expects.
nccl_arg=
if [ ! -f /usr/local/cuda/include/nccl.h ] && [ ! -f /usr/include/nccl.h ]; then
  ncdir=$(python3 -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))' 2>/dev/null ||
    python3 -c 'import nvidia.nccl; print(list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)
  if [ -n "$ncdir" ] && [ -f "$ncdir/include/nccl.h" ]; then
    mkdir -p "$work/nccl/lib"
    ln -sfn "$ncdir/include" "$work/nccl/include"
    ln -sfn "$ncdir/lib/libnccl.so.2" "$work/nccl/lib/libnccl.so"
    nccl_arg=-DNCCL_ROOT=$root/$work/nccl
    export LD_LIBRARY_PATH="$ncdir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
fi

# What the chosen parts run: the library always (the Python parts load it),
# the GPU test binaries, the example, the benchmarks.  Building only these
# skips the CPU tiers' tests (minutes of compiling no part runs).
gpu_test_names() { # one per tests/test_gpu_*.c, built or not
  (cd tests && ls test_gpu_*.c) | sed 's/\.c$//'
}
targets_wanted() {
  local p
  echo fusedopt
  for p in "${selected[@]}"; do
    case "$p" in
      tests | big | memcheck | racecheck | initcheck) gpu_test_names ;;
      train | demo) echo train ;;
      bench) echo bench ;;
      variants) echo step_variants ;;
    esac
  done | sort -u
}
configure() { # [ARGS]: the Release build for this GPU
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFO_BUILD_EMU=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="${FO_CUDA_ARCH:-90}" ${nccl_arg:+"$nccl_arg"} "$@"
}
build_cmd() {
  local have=() t
  # without .devpack the tests (Criterion) and the example (zlib's
  # headers) cannot be configured: the rest still can, and the parts that
  # need neither still run
  if ! configure -DFO_BUILD_TESTS=ON -DFO_BUILD_EXAMPLES=ON; then
    echo "gpu_check: WARNING: configure with the tests failed (Criterion missing? carry .devpack);" \
      "building without them"
    if ! configure -DFO_BUILD_TESTS=OFF -DFO_BUILD_EXAMPLES=ON; then
      echo "gpu_check: WARNING: configure with the example failed too (zlib's headers missing?" \
        "carry .devpack); building without it"
      configure -DFO_BUILD_TESTS=OFF -DFO_BUILD_EXAMPLES=OFF || return 1
    fi
  fi
  # the wanted targets this configuration has
  for t in $targets; do
    ninja -C "$build" -t query "$t" >/dev/null 2>&1 && have+=("$t")
  done
  cmake --build "$build" -j "$(nproc)" --target "${have[@]}"
}
targets=$(targets_wanted | tr '\n' ' ')
[ -f .devpack/env.sh ] || [ -n "${DEVPACK:-}" ] ||
  note "gpu_check: WARNING: no .devpack/env.sh here: where Criterion or zlib's headers are missing" \
    "(a lent machine), the tests or the example cannot be built"
if [ "$dry" = 1 ]; then
  printf '%-34s limit %4ss: %s\n' build "$(left)" \
    "cmake (Release, sm_${FO_CUDA_ARCH:-90}) && cmake --build --target $targets"
else
  t0=$(date +%s)
  export -f build_cmd configure
  export build nccl_arg targets
  if ! watched "$(left)" "$work/logs/build.log" build_cmd; then
    note "build FAILED after $(($(date +%s) - t0))s"
    tail -40 "$work/logs/build.log"
    bundle
    exit 1
  fi
  grep -a 'gpu_check: WARNING' "$work/logs/build.log" | tee -a "$summary"
  note "$(printf '%-34s exit %3s  %4ss' build 0 "$(($(date +%s) - t0))")"
  bundle
fi

# ------------------------------------------------------------------ parts
bin=$build/tests
big_test='gpu/tensor_past_2_31_elements'
with_filter() { # PART DEFAULT: the filter given for PART, else DEFAULT
  echo "${filter_of[$1]:-$2}"
}

run_tests() {
  local f n t
  if [ "$dry" = 0 ] && ! compgen -G "$bin/test_gpu_*" >/dev/null; then
    note "tests                              skipped: no test binary was built (the build's warnings)"
    return
  fi
  # a dry run lists them before any is built
  for n in $(gpu_test_names); do
    t=$bin/$n
    [ "$dry" = 1 ] || [ -x "$t" ] || continue
    f=$(with_filter tests '*')
    [ "$n" = test_gpu_kernels_device ] && [ "$f" = '*' ] && f="!($big_test)"
    part "tests-$n" "$t" --verbose --jobs=1 --filter="$f"
  done
}

run_demo() {
  local d=$build/examples/train
  for args in "--device cpu" "--device cuda" "--device cuda --precision bf16" \
    "--device cuda --graph" "--device cuda --graph --precision bf16"; do
    echo "== train $args"
    # shellcheck disable=SC2086
    "$d" $args --out "$work/demo" --no-plot | grep -E 'epoch +(1|30) |RESULT|error'
  done
}

run_bench() {
  local list lists=${filter_of[bench]:-a+aclip+new+c+d+b+m+m0+d0}
  rm -f "$work"/logs/bench_gpu_*.csv # an earlier call's, on a machine kept warm
  for list in ${lists//+/ }; do
    if [ "$list" = aclip ]; then # issue #15: clipping and loss scaling on, list a
      part "bench-aclip" "$build/bench/bench" --list a --alg adamw \
        --config fp32-clip,bf16-master-clip --reps 20 --warmup 3 --csv "$work/logs/bench_gpu_aclip.csv"
      continue
    fi
    if [ "$list" = new ]; then # the algorithms of issue #17, list a, eager
      part "bench-new" "$build/bench/bench" --list a --alg lamb,lars,adagrad,rmsprop,nadam \
        --config fp32,bf16-master --reps 10 --warmup 2 --csv "$work/logs/bench_gpu_new.csv"
      continue
    fi
    # list m: one input set, as bench_torch.py's mlp (a latency, in L2).
    # m0, d0: lists m and d with every step through the prepare kernel
    # (FUSEDOPT_HOST_SCALARS=0), beside the host-decided eager steps
    local base=${list%0} pre=()
    [ "$base" != "$list" ] && pre=(env FUSEDOPT_HOST_SCALARS=0)
    part "bench-$list" "${pre[@]}" "$build/bench/bench" --list "$base" --alg adamw,sgd,lion \
      --config fp32,bf16-master --layers 4 --reps 20 --warmup 3 --graph \
      $([ "$base" = m ] && echo --sets 1) --csv "$work/logs/bench_gpu_$list.csv"
  done
  # one CSV, the header once; the m0/d0 rows labelled as such
  local first=1
  [ "$dry" = 1 ] && return 0
  for list in a aclip new c d b m m0 d0; do
    local f=$work/logs/bench_gpu_$list.csv
    [ -s "$f" ] || continue
    if [ $first = 1 ]; then head -1 "$f"; first=0; fi
    tail -n +2 "$f" | if [ "${list%0}" != "$list" ]; then
      awk -F, -v OFS=, -v col="$(head -1 "$f" | tr , '\n' | grep -nx label | cut -d: -f1)" \
        '{ $col = $col " prepare-kernel"; print }'
    else cat; fi
  done >"$out/bench_gpu.csv"
}

# Sanitizer: one test of each kernel family (the step with its plan, the
# converters, the norm / unscale pre-pass, the collectives' path, the
# checkpoint copies, LAMB's norms and factors passes: last, the longest).  NCCL's initialisation reports API errors: leave
# those out; memory errors are still reported.
san_tests="test_gpu_kernels_matrix:gpu/arena test_gpu_kernels_device:gpu/sync_master_and_zero_grad
  test_gpu_kernels_matrix:gpu/repeatable_and_graph_replay
  test_gpu_mixed_precision_streams:gpu_mp/graph_replay_matches_eager_steps
  test_gpu_mixed_precision_clipping:gpu_mp/clipping_matches_the_cpu_executor_and_a_double_norm
  test_gpu_mixed_precision_scaler:gpu_mp/scaler_grows_and_backs_off_on_the_device
  test_gpu_comm:gpu_comm/one_rank_sharded_state test_gpu_checkpoint:gpu_checkpoint/resume_adamw
  test_gpu_kernels_matrix:gpu/matrix_lamb"
run_san() { # TOOL [GLOB]: the sanitizer tests whose name matches GLOB
  local tool=$1 glob=${2:-*} t f
  shopt -s extglob
  for s in $san_tests; do
    t=${s%%:*}
    f=${s#*:}
    # shellcheck disable=SC2053
    [[ "$f" == @($glob) ]] || continue
    echo "== $tool $t $f"
    # the whole output in a file of its own (bundled even if the part is
    # killed), its end in the part's log
    local log=$work/logs/${tool}_${t#test_gpu_}_${f//[^A-Za-z0-9_]/_}.log
    "$sanitizer" --tool "$tool" --report-api-errors no --error-exitcode 99 \
      "$bin/$t" --filter="$f" --jobs=1 --verbose >"$log" 2>&1
    local rc=$?
    grep -avE '^\[----\]' "$log" | tail -30
    echo "== $tool $t: exit $rc"
  done
}

# The PyTorch path in three variants, each in its own process.
run_torchdebug() {
  local py=(python3 scripts/bench_torch.py --lib "$build/host/libfusedopt.so"
    --cases adamw:fp32 --reps 3 --warmup 1)
  # The cause found by reading (docs/gpu-verification.md, "Open"): the
  # script let the capturable torch optimizers whose graphs it replayed be
  # freed.  Torch alone, each in its own process (the fault is sticky):
  # keep=0 should fault, keep=1 finish.
  # Each step's whole output goes to a file of its own in logs/ as it runs
  # (bundled even when the part is killed: the progress lines locate a
  # fault), its end to the part's log; the last line sums up the exits.
  local keep log=$work/logs/torchdebug rc_keep=() rc_async rc_bench rc_san
  for keep in 0 1; do
    echo "== torch alone: graph of a capturable AdamW replayed, optimizer kept=$keep"
    python3 - "$keep" >"${log}_keep$keep.log" 2>&1 <<'PY'

import sys
import torch
keep = sys.argv[1] == "1"
ps = [torch.nn.Parameter(torch.rand(n, device="cuda")) for n in (1 << 24, 4096)]
for p in ps:
    p.grad = torch.rand_like(p)
opt = torch.optim.AdamW(ps, capturable=True, fused=True)
side = torch.cuda.Stream()
side.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(side):
    for _ in range(3):
        opt.step()
torch.cuda.current_stream().wait_stream(side)
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    opt.step()
if not keep:
    del opt  # its state goes back to the caching allocator
torch.cuda.empty_cache()  # and from there to the driver
for _ in range(5):
    graph.replay()
torch.cuda.synchronize()
print("replays finished")
PY
    rc_keep+=($?)
    tail -3 "${log}_keep$keep.log"
    echo "== exit ${rc_keep[-1]}"
  done
  # --require-graphs: exit 3 when a capture failed, so that a run without
  # graph rows does not read as one whose replays were clean; once without
  # CUDA_LAUNCH_BLOCKING, so that a capture refused only in blocking mode
  # still shows the answer
  echo "== bench_torch.py with graphs, list mlp"
  "${py[@]}" --lists mlp --require-graphs >"${log}_graphs_async.log" 2>&1
  rc_async=$?
  tail -30 "${log}_graphs_async.log"
  echo "== exit $rc_async"
  echo "== bench_torch.py with graphs, lists a and mlp, CUDA_LAUNCH_BLOCKING=1"
  CUDA_LAUNCH_BLOCKING=1 "${py[@]}" --lists a,mlp --require-graphs >"${log}_graphs.log" 2>&1
  rc_bench=$?
  tail -60 "${log}_graphs.log"
  echo "== exit $rc_bench"
  # its own limit: memcheck of a torch process is slow, and the part's
  # limit would otherwise take the time of the parts after it
  echo "== bench_torch.py with graphs, list mlp, memcheck (at most 45 s)"
  timeout 45 "$sanitizer" --tool memcheck --report-api-errors no "${py[@]}" --lists mlp \
    >"${log}_memcheck.log" 2>&1
  rc_san=$?
  head -80 "${log}_memcheck.log"
  echo "== exit $rc_san"
  echo "torchdebug: torch alone keep=0 exit ${rc_keep[0]}, keep=1 exit ${rc_keep[1]};" \
    "bench_torch graphs exit $rc_async, blocking exit $rc_bench (3: a capture failed);" \
    "under memcheck exit $rc_san" \
    "($(grep -ah 'ERROR SUMMARY' "${log}_memcheck.log" | tail -1))"
}

# fusedopt.torch's CUDA tests against the library just built: the eager
# ones in one process, the graph captures in another.
run_torchtests() {
  cd "$root/python/tests" || return 1
  local lib=$build/host/libfusedopt.so which list rc=0
  [ "${lib#/}" = "$lib" ] && lib=$root/$lib
  export FUSEDOPT_LIBRARY=$lib PYTHONPATH=$root/python
  # each run's whole output in logs/ (bundled), its tail in the part's log
  local logs=$work/logs
  [ "${logs#/}" = "$logs" ] && logs=$root/$logs
  for which in eager graph; do
    # test_torch.Cuda's tests, and test_torch_contract's Cuda* classes
    # (the contract's CPU tests again on the GPU) with the eager ones
    list=$(python3 -c 'import sys, test_torch as t, test_torch_contract as c
graph = sys.argv[1] == "graph"
names = ["test_torch.Cuda." + n for n in sorted(dir(t.Cuda))
         if n.startswith("test") and ("graph" in n) == graph]
if not graph:
    names += ["test_torch_contract." + n for n in sorted(dir(c)) if n.startswith("Cuda")]
print(" ".join(names))' "$which") || return 1
    echo "== $which: $list"
    # shellcheck disable=SC2086
    python3 -m unittest -v $list >"$logs/torchtests_$which.log" 2>&1 || rc=1
    tail -30 "$logs/torchtests_$which.log"
  done
  # the CPU tests too, under this machine's torch (2.x: CI has Debian's
  # 1.13, where NAdam's and the step hooks' tests skip)
  list=$(python3 -c 'import unittest, test_torch, test_torch_contract
for m in (test_torch, test_torch_contract):
    print(" ".join(m.__name__ + "." + n for n in sorted(dir(m))
                   if not n.startswith("Cuda") and n != "OnDevice"
                   and isinstance(getattr(m, n), type)
                   and issubclass(getattr(m, n), unittest.TestCase)
                   and getattr(m, n).__module__ == m.__name__), end=" ")') ||
    return 1
  echo "== cpu: test_library test_optimizer $list"
  # shellcheck disable=SC2086
  python3 -m unittest -v test_library test_optimizer $list >"$logs/torchtests_cpu.log" 2>&1 || rc=1
  grep -E '(FAIL|ERROR):' "$logs/torchtests_cpu.log" | head -40
  tail -30 "$logs/torchtests_cpu.log"
  return "$rc"
}

# The whole training step of GPT-2 small (about 40 s on an H100 by estimate:
# ~35 steps per precision).  Exit 77 (no torch) is a skip, said so.
run_torchtrain() {
  python3 scripts/bench_torch_train.py --lib "$build/host/libfusedopt.so" --device cuda \
    --precision fp32,bf16,bf16-master --impls fusedopt,torch_fused,torch_foreach \
    --steps 10 --warmup 3 --csv "$work/logs/torch_train_gpu.csv"
  local rc=$?
  [ "$rc" = 77 ] && echo "torchtrain skipped: python3 cannot import torch" && return 0
  # the Python example, fusedopt.torch beside torch.optim.AdamW
  local lib=$build/host/libfusedopt.so
  [ "${lib#/}" = "$lib" ] && lib=$root/$lib
  FUSEDOPT_LIBRARY=$lib PYTHONPATH=$root/python python3 examples/train_torch.py \
    --device cuda --precision bf16 --compare-torch --epochs 5 --no-plot \
    --out "$work/logs/train_torch" || rc=1
  return "$rc"
}

export -f run_demo run_san run_torchdebug run_torchtrain run_torchtests
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/compute-sanitizer/compute-sanitizer)
export build work bin san_tests sanitizer root
for p in "${selected[@]}"; do
  case "$p" in
    tests) run_tests ;;
    train) part train_example_gpu bash tests/test_train_example.sh gpu "$build/examples/train" "$root" ;;
    demo) part demo run_demo ;;
    torchtests) PYTHONUNBUFFERED=1 part torchtests run_torchtests ;;
    big) part big-tensor_past_2_31 "$bin/test_gpu_kernels_device" --verbose --jobs=1 --filter="$big_test" ;;
    bench) run_bench ;;
    variants)
      part variants "$build/bench/step_variants" --lists "$(l=${filter_of[variants]:-a+d}; echo "${l//+/,}")" \
        --reps 20 --warmup 3 --csv "$work/logs/step_variants.csv" ;;
    torch)
      # LISTclip (aclip, mlpclip, ...): that list again, AdamW with
      # clip_grad_norm_ / max_grad_norm 1.0, in a run of its own
      plain="" clip=""
      rm -f "$work/logs/torch_gpu.csv" "$work/logs/torch_gpu_clip.csv" # an earlier call's
      for l in $(l=${filter_of[torch]:-a+mlp+d}; echo "${l//+/ }"); do
        case "$l" in
          *clip) clip+="${clip:+,}${l%clip}" ;;
          *) plain+="${plain:+,}$l" ;;
        esac
      done
      [ -n "$plain" ] && PYTHONUNBUFFERED=1 part torch python3 scripts/bench_torch.py \
        --lib "$build/host/libfusedopt.so" --lists "$plain" --reps 20 --warmup 3 \
        --csv "$work/logs/torch_gpu.csv"
      [ -n "$clip" ] && PYTHONUNBUFFERED=1 part torch-clip python3 scripts/bench_torch.py \
        --lib "$build/host/libfusedopt.so" --lists "$clip" --clip 1.0 --cases adamw:fp32,adamw:bf16,sgd:fp32 \
        --reps 20 --warmup 3 --csv "$work/logs/torch_gpu_clip.csv"
      # one CSV, the header once
      rm -f "$out/torch_gpu.csv"
      for f in "$work/logs/torch_gpu.csv" "$work/logs/torch_gpu_clip.csv"; do
        [ -s "$f" ] || continue
        if [ -s "$out/torch_gpu.csv" ]; then tail -n +2 "$f"; else cat "$f"; fi >>"$out/torch_gpu.csv"
      done ;;
    torchtrain)
      PYTHONUNBUFFERED=1 part torchtrain run_torchtrain
      [ -s "$work/logs/torch_train_gpu.csv" ] && cp "$work/logs/torch_train_gpu.csv" "$out/torch_train_gpu.csv" ;;
    memcheck | racecheck | initcheck) part "$p" run_san "$p" "${filter_of[$p]:-*}" ;;
    torchdebug) PYTHONUNBUFFERED=1 part torchdebug run_torchdebug ;;
  esac
done

# ------------------------------------------------------------------ table
if [ "$dry" = 0 ]; then
  {
    echo
    echo "== headline ratios (bench: fused step over copy, eager; graph where measured)"
    if [ -s "$out/bench_gpu.csv" ]; then
      awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
               { printf "  %-22s of_copy %6s  graph %6s  vs_naive %7s  us %9s / %9s  check %s\n",
                 $c["label"], $c["fused_of_copy"], $c["graph_of_copy"], $c["speedup"],
                 $c["fused_us"], $c["graph_us"], $c["check"] }' \
        "$out/bench_gpu.csv"
    fi
    if [ -s "$work/logs/step_variants.csv" ]; then
      echo "== step kernel variants (bench/step_variants; of_copy: eager, update kernel alone)"
      awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
               { printf "  %-2s %-18s %-10s regs %3s  blocks/SM %2s  %9s us  of_copy %s  %s\n",
                 $c["list"], $c["config"], $c["variant"], $c["regs"], $c["blocks_per_sm"],
                 $c["us"], $c["of_copy"], $c["check"] }' "$work/logs/step_variants.csv"
    fi
    if [ -s "$out/torch_gpu.csv" ]; then
      echo "== torch (time over fusedopt's eager step; above 1: fusedopt faster)"
      awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
               { printf "  %-4s %-6s %-16s %-26s %10s us  x%s %s\n", $c["list"], $c["alg"],
                 $c["config"], $c["impl"], $c["time_us"], $c["fusedopt_speedup"], $c["check"] }' \
        "$out/torch_gpu.csv"
    fi
    if [ -s "$out/torch_train_gpu.csv" ]; then
      echo "== torch training step (time over fusedopt's; above 1: fusedopt faster)"
      awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
               { printf "  %-11s %-14s step %8s ms x%-6s  opt %8s ms x%-6s  %s %s\n", $c["precision"],
                 $c["impl"], $c["step_ms"], $c["step_vs_fusedopt"], $c["opt_ms"],
                 $c["opt_vs_fusedopt"], $c["check"], $c["check_err"] }' \
        "$out/torch_train_gpu.csv"
    fi
    echo "== total $(($(date +%s) - start))s of a ${budget}s budget"
  } >>"$summary"
  bundle
  echo
  echo "================ summary"
  cat "$summary"
  rm -f "$out/current.log"
fi
exit 0
