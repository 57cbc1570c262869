#!/usr/bin/env bash
# Render PNG plots from the benchmark's CSV files (needs gnuplot: on Debian
# `apt-get install gnuplot-nox`).
#
#   bash bench/plot.sh [FILE.csv ...]     (default: every bench/results/*.csv)
#
# For a CSV of bench (header "backend,..."), next to it:
#   NAME_bandwidth.png  effective bandwidth of the copy, the fused step (eager
#                       and graph-replayed) and the naive step, per row;
#   NAME_ratios.png     the fused step's bandwidth over the copy's, and its
#                       speed-up over the naive step, with the targets.
# For a CSV of scripts/bench_torch.py (header "mode,..."):
#   NAME_speedup.png    each PyTorch implementation's time over fusedopt's
#                       eager step (above 1: fusedopt is faster).
set -euo pipefail
command -v gnuplot >/dev/null || { echo "plot.sh: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 1; }
cd "$(dirname "$0")/.."
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(bench/results/*.csv)

# Width for n groups of k bars, so labels stay readable.
width() { local w=$((160 + $1 * ($2 * 14 + 16))); echo $((w < 800 ? 800 : w)); }
rows() { echo $(($(wc -l <"$1") - 1)); }
# The first data row's value of a column (the device's name, the backend).
field() { awk -F, -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i } NR == 2 { print $k }' "$1"; }

# Whether a column has any value (the graph columns are empty on the CPU).
has_values() { awk -F, -v c="$2" 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == c) k = i; next } $k != "" { f = 1 } END { exit !f }' "$1"; }

# Settings every plot shares: bars clustered by row, labels rotated.
common() {
  cat <<EOF
set datafile separator ','
set datafile columnheaders
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by -50 scale 0 font ',9'
set grid ytics
set key top left horizontal
set yrange [0:*]
EOF
}

plot_bench() {
  local csv=$1 base=${1%.csv} n dev backend target_copy target_naive graph_bw='' graph_ratio='' bars=3
  n=$(rows "$csv")
  dev=$(field "$csv" device)
  backend=$(field "$csv" backend)
  # The targets of docs/performance.md: 0.90 of copy and 5x naive on the GPU,
  # 0.80 of memcpy on the CPU.
  if [ "$backend" = cuda ]; then target_copy=0.9; target_naive=5; else target_copy=0.8; target_naive=; fi
  if has_values "$csv" graph_gbps; then
    graph_bw=", '' using 'graph_gbps' title 'fusedopt graph replay' lc rgb '#2ca02c'"
    graph_ratio=", '' using 'graph_of_copy' title 'graph replay' lc rgb '#2ca02c'"
    bars=4
  fi
  gnuplot <<EOF
$(common)
set terminal pngcairo size $(width "$n" $bars),560 noenhanced
set output '${base}_bandwidth.png'
set title "effective bandwidth (counted bytes / median time)\n$backend: $dev"
set ylabel 'GB/s'
set bmargin 9
set offsets 0, 0, graph 0.15, 0
plot '$csv' using 'copy_gbps':xtic(stringcolumn('label')) title 'copy (the limit)' lc rgb '#999999', \
     '' using 'fused_gbps' title 'fusedopt eager' lc rgb '#1f77b4' $graph_bw, \
     '' using 'naive_gbps' title 'naive per-tensor per-op' lc rgb '#d62728'
EOF
  gnuplot <<EOF
$(common)
set terminal pngcairo size $(width "$n" $((bars - 2))),900 noenhanced
set output '${base}_ratios.png'
set multiplot title "fusedopt, $backend: $dev"
set lmargin 10
set rmargin 3
set size 1, 0.42
set origin 0, 0.52
set title 'effective bandwidth over the copy measured with it (target ${target_copy})'
set yrange [0:1.25]
unset xtics
plot '$csv' using 'fused_of_copy' title 'eager' lc rgb '#1f77b4' $graph_ratio, \
     ${target_copy} with lines dt 2 lc rgb 'black' title 'target'
set size 1, 0.52
set origin 0, 0
set title 'speed-up over the naive step${target_naive:+ (target ${target_naive}x)}'
set yrange [0:*]
set offsets 0, 0, graph 0.15, 0
set xtics rotate by -50 scale 0 font ',9'
set bmargin 9
plot '$csv' using 'speedup':xtic(stringcolumn('label')) title 'naive time / fused time' lc rgb '#ff7f0e'${target_naive:+, $target_naive with lines dt 2 lc rgb 'black' title 'target'}
unset multiplot
EOF
  echo "wrote ${base}_bandwidth.png ${base}_ratios.png"
}

# bench_torch.py's rows are one per implementation: pivot them into one row
# per (list, alg, config) and one column per PyTorch implementation.
pivot_torch() {
  awk -F, '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    $col["impl"] ~ /^torch/ {
      label = $col["list"] "/" $col["alg"] "/" $col["config"]
      impl = $col["impl"]
      if (!(label in seen)) { seen[label] = 1; labels[++nl] = label }
      if (!(impl in iseen)) { iseen[impl] = 1; impls[++ni] = impl }
      v[label, impl] = $col["fusedopt_speedup"]
    }
    END {
      printf "label"; for (j = 1; j <= ni; j++) printf ",%s", impls[j]; printf "\n"
      for (i = 1; i <= nl; i++) {
        printf "%s", labels[i]
        for (j = 1; j <= ni; j++) printf ",%s", v[labels[i], impls[j]]
        printf "\n"
      }
    }' "$1"
}

plot_torch() {
  local csv=$1 base=${1%.csv} dev pivot ncol n target=''
  dev=$(field "$csv" device)
  # the 1.3x target (list a) is against PyTorch's fused CUDA AdamW
  [ "$(field "$csv" mode)" = cuda ] && target=", 1.3 with lines dt 3 lc rgb 'black' title 'target 1.3 (list a)'"
  pivot=$(mktemp)
  pivot_torch "$csv" >"$pivot"
  ncol=$(head -1 "$pivot" | awk -F, '{ print NF }')
  n=$(rows "$pivot")
  gnuplot <<EOF
$(common)
set terminal pngcairo size $(width "$n" $((ncol - 1))),560 noenhanced
set output '${base}_speedup.png'
set title "PyTorch's step time over fusedopt's eager step (above 1: fusedopt is faster)\n$dev"
set bmargin 7
set offsets 0, 0, graph 0.15, 0
plot for [i=2:$ncol] '$pivot' using i:xtic(1) title columnhead(i), \
     1 with lines dt 2 lc rgb 'black' title 'equal' $target
EOF
  rm -f "$pivot"
  echo "wrote ${base}_speedup.png"
}

for csv in "${files[@]}"; do
  [ -f "$csv" ] || { echo "plot.sh: no such file: $csv" >&2; exit 1; }
  case "$(head -c 8 "$csv")" in
    backend,) plot_bench "$csv" ;;
    mode,*) plot_torch "$csv" ;;
    *) echo "plot.sh: $csv is neither bench's nor bench_torch.py's CSV" >&2; exit 1 ;;
  esac
done
