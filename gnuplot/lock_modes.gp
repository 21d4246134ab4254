# The lock-mode comparison (results/lock-modes.csv, four runs in the order -w 2 account, -w 2
# global, -w 4 account, -w 4 global) into results/lock_modes.png.
# Run from the repository root: gnuplot gnuplot/lock_modes.gp

set datafile separator ','
set terminal pngcairo size 900,520 font 'DejaVu Sans,11'
set output 'results/lock_modes.png'
set title "trade-heavy, 200 connections, 8 hot accounts: per-account locks vs one ledger lock" font ',10'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set grid ytics
set ylabel 'latency (milliseconds)'
set y2label 'requests per second (thousands)'
set y2tics
set ytics nomirror
set yrange [0:18]
set y2range [0:230]
set key top center horizontal box opaque
set xtics ("-w 2 account" 0, "-w 2 global" 1, "-w 4 account" 2, "-w 4 global" 3)
plot '< tail -n +2 results/lock-modes.csv' using ($18/1000.0) title 'p50', \
     '' using ($20/1000.0) title 'p99', \
     '' using ($21/1000.0) title 'p99.9', \
     '' using 0:($17/1000.0) axes x1y2 with linespoints lw 2 pt 7 lc rgb '#444444' title 'req/s (right axis)'
