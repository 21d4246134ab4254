# Latency percentile distributions from the .hgrm files `bench-client sweep` writes into
# results/sweep-hgrm/ (beside results/sweep.csv; one file per cell, merged over its repeats), drawn into results/latency_distribution_*.png.
# Run from the repository root: gnuplot gnuplot/latency.gp
#
# An .hgrm row is: value (us), percentile, total count, 1/(1-percentile). Plotting column 1
# against column 4 on a log x axis spreads the tail: 10 = p90, 100 = p99, 1000 = p99.9.

if (!exists('hgrm')) hgrm = 'results/sweep-hgrm'
if (!exists('out')) out = 'results/'

set terminal pngcairo size 900,560 font 'DejaVu Sans,11'
set grid
set key top left box opaque
set logscale x 10
set xtics ("p0" 1, "p90" 10, "p99" 100, "p99.9" 1000, "p99.99" 10000, "p99.999" 100000)
set xlabel 'percentile'
set ylabel 'latency (microseconds)'
set logscale y 10

do for [mix in "trade-heavy mixed chat-heavy"] {
    set output sprintf('%slatency_distribution_%s.png', out, mix)
    set title sprintf("Latency distribution, %s, 100 connections, 32 B payload, by server workers (2 shared cores)", mix) font ',10'
    plot for [w in "1 2 4 8"] sprintf('%s/w%s-%s-p32-c100.hgrm', hgrm, w, mix) \
        using 4:1 every ::2 with lines lw 2 title w.' workers'
}
