# Charts from a sweep's summary (written by `bench-client sweep` beside its CSV: the median of
# each cell over its --repeat runs, with min and max) into PNGs. Error bars span min to max.
# Run from the repository root: gnuplot gnuplot/throughput.gp
# (another sweep and output prefix: gnuplot -e "csv='results/quick.csv'; out='results/quick-'" ...)
#
# Summary columns: 1 workers, 2 mix, 3 payload, 4 connections, 5 runs, 6-8 req/s (median, min,
# max), 9-11 p50 us, 12-14 p99 us, 15-17 pushes/s. Rows are selected with awk so that each line
# joins consecutive points of one series.

set datafile separator ','
set terminal pngcairo size 900,560 font 'DejaVu Sans,11'
set grid
set key top right box opaque
if (!exists('csv')) csv = 'results/sweep.csv'
if (!exists('out')) out = 'results/'
if (!exists('summary')) summary = csv[1:strlen(csv)-4].'-summary.csv'
conns = 100
rows(mix, extra) = sprintf("< awk -F, 'NR>1 && $4==%d && $2==\"%s\" %s' %s", conns, mix, extra, summary)

# 1. Throughput against server workers, one line per mix (32-byte payloads).
set output out.'throughput_vs_workers.png'
set title sprintf("Requests per second vs server workers (%d connections, 32 B payload; median, min-max)", conns) font ',10'
set xlabel 'server worker processes'
set ylabel 'requests per second'
set logscale x 2
set xrange [0.8:10]
set yrange [0:*]
plot rows('trade-heavy', '&& $3==32') using 1:6:7:8 with yerrorlines lw 2 pt 7 title 'trade-heavy', \
     rows('mixed', '&& $3==32') using 1:6:7:8 with yerrorlines lw 2 pt 5 title 'mixed', \
     rows('chat-heavy', '&& $3==32') using 1:6:7:8 with yerrorlines lw 2 pt 9 title 'chat-heavy'

# 1b. Throughput against server workers, one line per payload (mixed workload).
set output out.'throughput_vs_workers_by_payload.png'
set title sprintf("Requests per second vs server workers, mixed workload, by payload (%d connections)", conns)
plot for [p in "32 256 1024"] rows('mixed', '&& $3=='.p) using 1:6:7:8 with yerrorlines lw 2 title p.' B payload'
unset logscale x

# 2. Throughput against payload, one line per worker count (mixed).
set key bottom left box opaque
set output out.'throughput_vs_payload.png'
set title sprintf("Requests per second vs chat payload, mixed workload (%d connections)", conns)
set xlabel 'chat message payload (bytes)'
set ylabel 'requests per second'
set logscale x 2
set xrange [24:1400]
plot for [w in "1 2 4 8"] rows('mixed', '&& $1=='.w) using 3:6:7:8 with yerrorlines lw 2 title w.' workers'

# 3. Pushes delivered per second against payload (chat-heavy).
set output out.'pushes_vs_payload.png'
set title sprintf("Chat pushes received per second vs payload, chat-heavy (%d connections)", conns)
set ylabel 'pushes received by clients per second'
plot for [w in "1 2 4 8"] rows('chat-heavy', '&& $1=='.w) using 3:15:16:17 with yerrorlines lw 2 title w.' workers'

# 4. Latency against payload, p50 and p99 (mixed, 2 workers).
set output out.'latency_vs_payload.png'
set title sprintf("Request latency vs payload, mixed workload, 2 workers (%d connections)", conns)
set ylabel 'latency (microseconds, log scale)'
set logscale y 10
set yrange [100:*]
set key bottom right
plot rows('mixed', '&& $1==2') using 3:9:10:11 with yerrorlines lw 2 pt 7 title 'p50', \
     rows('mixed', '&& $1==2') using 3:12:13:14 with yerrorlines lw 2 pt 5 title 'p99'
