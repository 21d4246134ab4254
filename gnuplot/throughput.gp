# Charts from results/sweep.csv (written by `bench-client sweep`) into results/*.png.
# Run from the repository root: gnuplot gnuplot/throughput.gp
# (another CSV and output prefix: gnuplot -e "csv='results/quick.csv'; out='results/quick-'" ...)
#
# Columns used: 6 workers (seen), 7 connections, 9 mix, 10 payload, 17 req/s, 18 p50 us,
# 20 p99 us, 24 pushes/s. Every cell ran closed loop, 1 request in flight per connection, with
# the server and the client on the same 2 cores. Rows are selected with awk so that each line
# joins consecutive points of one series.

set datafile separator ','
set terminal pngcairo size 900,560 font 'DejaVu Sans,11'
set grid
set key top right box opaque
if (!exists('csv')) csv = 'results/sweep.csv'
if (!exists('out')) out = 'results/'
conns = 100
rows(mix, extra) = sprintf("< awk -F, '$7==%d && $9==\"%s\" %s' %s", conns, mix, extra, csv)

# 1. Throughput against server workers, one line per mix (32-byte payloads).
set output out.'throughput_vs_workers.png'
set title sprintf("Requests per second vs server workers (%d connections, 32 B payload; 2 cores shared with the client)", conns) font ',10'
set xlabel 'server worker processes'
set ylabel 'requests per second'
set logscale x 2
set xrange [0.8:10]
set yrange [0:*]
plot rows('trade-heavy', '&& $10==32') using 6:17 with linespoints lw 2 pt 7 title 'trade-heavy', \
     rows('mixed', '&& $10==32') using 6:17 with linespoints lw 2 pt 5 title 'mixed', \
     rows('chat-heavy', '&& $10==32') using 6:17 with linespoints lw 2 pt 9 title 'chat-heavy'

# 1b. Throughput against server workers, one line per payload (mixed workload).
set output out.'throughput_vs_workers_by_payload.png'
set title sprintf("Requests per second vs server workers, mixed workload, by payload (%d connections)", conns)
plot for [p in "32 256 1024"] rows('mixed', '&& $10=='.p) using 6:17 with linespoints lw 2 title p.' B payload'
unset logscale x

# 2. Throughput against payload, one line per worker count (mixed).
set key bottom left box opaque
set output out.'throughput_vs_payload.png'
set title sprintf("Requests per second vs chat payload, mixed workload (%d connections)", conns)
set xlabel 'chat message payload (bytes)'
set ylabel 'requests per second'
set logscale x 2
set xrange [24:1400]
plot for [w in "1 2 4 8"] rows('mixed', '&& $6=='.w) using 10:17 with linespoints lw 2 title w.' workers'

# 3. Pushes delivered per second against payload (chat-heavy).
set output out.'pushes_vs_payload.png'
set title sprintf("Chat pushes received per second vs payload, chat-heavy (%d connections)", conns)
set ylabel 'pushes received by clients per second'
plot for [w in "1 2 4 8"] rows('chat-heavy', '&& $6=='.w) using 10:24 with linespoints lw 2 title w.' workers'

# 4. Latency against payload, p50 and p99 (mixed, 2 workers).
set output out.'latency_vs_payload.png'
set title sprintf("Request latency vs payload, mixed workload, 2 workers (%d connections)", conns)
set ylabel 'latency (microseconds, log scale)'
set logscale y 10
set yrange [100:*]
set key bottom right
plot rows('mixed', '&& $6==2') using 10:18 with linespoints lw 2 pt 7 title 'p50', \
     rows('mixed', '&& $6==2') using 10:20 with linespoints lw 2 pt 5 title 'p99'
