# uring-server beside Redis, from `bench-client peers` (its <out>-pairs.csv: one row per
# durability x mix x pipeline, both servers' medians with min and max over the repeats).
# Run from the repository root: gnuplot gnuplot/peers.gp
# (another run: gnuplot -e "pairs='/tmp/p-pairs.csv'; out='/tmp/p-'" gnuplot/peers.gp)
#
# Pairs columns: 1 durability, 2 mix, 3 pipeline, 4 label, 5-7 NS req/s (median, min, max),
# 8-10 NS server CPU us/request, 11-13 Redis req/s, 14-16 Redis server CPU us/request.
# One PNG per durability: requests per second above, server CPU per request below, both on a
# log axis (pipeline 16 moves ten times what pipeline 1 does); error bars span min to max.

set datafile separator ','
set terminal pngcairo size 1000,820 font 'DejaVu Sans,10'
if (!exists('pairs')) pairs = 'results/peers-pairs.csv'
if (!exists('out')) out = 'results/peers-'
rows(d) = sprintf("< awk -F, 'NR>1 && $1==\"%s\"' %s", d, pairs)

set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.6 border -1
set grid ytics
set logscale y
set key top left box opaque
set xtics rotate by -20 nomirror

do for [d in "none sync"] {
  set output out.d.'.png'
  set multiplot layout 2,1 title sprintf("uring-server (NS) vs redis-server (RESP), durability %s; same client; median, min-max", d)
  set ylabel 'requests per second'
  set yrange [10000:*]
  plot rows(d) using 5:6:7:xtic(4) title 'uring-server' lc rgb '#1f77b4', \
       '' using 11:12:13 title 'redis-server' lc rgb '#d62728'
  set ylabel 'server CPU per request (us)'
  set yrange [0.1:*]
  plot rows(d) using 8:9:10:xtic(4) title 'uring-server' lc rgb '#1f77b4', \
       '' using 14:15:16 title 'redis-server' lc rgb '#d62728'
  unset multiplot
}
