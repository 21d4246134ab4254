//! HdrHistogram percentile files (.hgrm), the format HdrHistogram's plotters and gnuplot/ read.

use hdrhistogram::Histogram;

/// Writes a histogram as an HdrHistogram percentile file (.hgrm): value (µs), percentile, total
/// count, 1/(1-percentile); gnuplot plots column 4 on a log axis against column 1.
pub fn write_hgrm(path: &std::path::Path, h: &Histogram<u64>) -> std::io::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut count = 0u64;
    for v in h.iter_quantiles(5) {
        count += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            f64::INFINITY
        };
        if inv.is_finite() {
            let _ = writeln!(
                out,
                "{:12.3} {:14.12} {:10} {:14.2}",
                v.value_iterated_to() as f64,
                q,
                count,
                inv
            );
        } else {
            let _ = writeln!(
                out,
                "{:12.3} {:14.12} {:10}",
                v.value_iterated_to() as f64,
                q,
                count
            );
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean(),
        h.stdev(),
        h.max() as f64,
        h.len()
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, out)
}
