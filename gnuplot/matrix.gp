# The seed's test matrix (100 connections mixed at 32/256/1024-byte payloads, 200 connections
# trade-heavy; workers 1/2/4/8; 30 s per cell, repeated), from the two sweeps' summaries that
# results/matrix.sh writes. Run from the repository root: gnuplot gnuplot/matrix.gp
#
# Summary columns: 1 workers, 2 mix, 3 payload, 4 connections, 5 runs, 6-8 req/s (median, min,
# max), 9-11 p50 us, 12-14 p99 us, 15-17 pushes/s, 18-20 server CPU us/request, 21-23 client
# CPU us/request. Error bars span min to max over the runs.

set datafile separator ','
set terminal pngcairo size 900,560 font 'DejaVu Sans,11'
set grid
if (!exists('mixed')) mixed = 'results/matrix-mixed-summary.csv'
if (!exists('trade')) trade = 'results/matrix-trade-summary.csv'
if (!exists('out')) out = 'results/matrix-'
sel(file, extra) = sprintf("< awk -F, 'NR>1 %s' %s", extra, file)
set xlabel 'server worker processes'
set logscale x 2
set xrange [0.8:10]
set key outside right top box

set output out.'throughput.png'
set title 'Seed matrix: requests per second vs workers (median, min-max)'
set ylabel 'requests per second'
set yrange [0:*]
plot for [p in "32 256 1024"] sel(mixed, '&& $3=='.p) using 1:6:7:8 with yerrorlines lw 2 title 'mixed, 100 conns, '.p.' B', \
     sel(trade, '') using 1:6:7:8 with yerrorlines lw 2 dt 2 title 'trade-heavy, 200 conns'

set output out.'latency.png'
set title 'Seed matrix: p50 (solid) and p99 (dashed) latency vs workers (median, min-max)'
set ylabel 'latency (us)'
set logscale y
set yrange [*:*]
plot for [p in "32 256 1024"] sel(mixed, '&& $3=='.p) using 1:9:10:11 with yerrorlines lw 2 title 'p50 mixed '.p.' B', \
     for [p in "32 256 1024"] sel(mixed, '&& $3=='.p) using 1:12:13:14 with yerrorlines lw 2 dt 2 title 'p99 mixed '.p.' B', \
     sel(trade, '') using 1:9:10:11 with yerrorlines lw 2 title 'p50 trade-heavy', \
     sel(trade, '') using 1:12:13:14 with yerrorlines lw 2 dt 2 title 'p99 trade-heavy'
unset logscale y

set output out.'cpu.png'
set title 'Seed matrix: server CPU per request vs workers (journal writer included)'
set ylabel 'server CPU per request (us)'
set yrange [0:*]
plot for [p in "32 256 1024"] sel(mixed, '&& $3=='.p) using 1:18:19:20 with yerrorlines lw 2 title 'mixed, 100 conns, '.p.' B', \
     sel(trade, '') using 1:18:19:20 with yerrorlines lw 2 dt 2 title 'trade-heavy, 200 conns'
