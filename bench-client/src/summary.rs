//! A sweep's repeated cells, summarised: per cell (workers, mix, payload, connections) the
//! median and the min–max of throughput, p50, p99 and pushes over its runs. The sweep prints it
//! as its table and writes it beside its CSV (`<out>-summary.csv`), which the charts draw with
//! error bars.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One cell of a sweep.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cell {
    /// Server workers.
    pub workers: u32,
    /// Mix name.
    pub mix: String,
    /// Payload bytes.
    pub payload: usize,
    /// Connections.
    pub connections: usize,
}

/// One run of a cell.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    /// Requests per second.
    pub req_s: f64,
    /// p50 latency, µs.
    pub p50_us: u64,
    /// p99 latency, µs.
    pub p99_us: u64,
    /// Pushes received per second.
    pub pushes_s: f64,
    /// The ledger audit after it: passed, failed, or none ran (chat-only mixes).
    pub audit: Option<bool>,
}

/// Median, min and max of `v` (sorted in place); zeros when empty.
pub fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// The runs of every cell, sorted by workers, mix, payload and connections.
#[derive(Debug, Default)]
pub struct Summary {
    cells: BTreeMap<Cell, Vec<Run>>,
}

impl Summary {
    /// Adds one run.
    pub fn add(&mut self, cell: Cell, run: Run) {
        self.cells.entry(cell).or_default().push(run);
    }

    /// The table people read: one line per cell, median [min–max].
    pub fn table(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{:>7} {:>11} {:>7} {:>5} {:>4} {:>26} {:>22} {:>22} {:>10} {:>6}",
            "workers",
            "mix",
            "payload",
            "conns",
            "runs",
            "req/s median [min-max]",
            "p50_us [min-max]",
            "p99_us [min-max]",
            "pushes/s",
            "audit"
        )];
        for (c, runs) in &self.cells {
            let col = |f: &dyn Fn(&Run) -> f64| spread(&mut runs.iter().map(f).collect::<Vec<_>>());
            let (r, r0, r1) = col(&|x| x.req_s);
            let (p, p0, p1) = col(&|x| x.p50_us as f64);
            let (q, q0, q1) = col(&|x| x.p99_us as f64);
            let (s, _, _) = col(&|x| x.pushes_s);
            let audit = if runs.iter().all(|x| x.audit.is_none()) {
                ""
            } else if runs.iter().all(|x| x.audit != Some(false)) {
                "pass"
            } else {
                "FAIL"
            };
            out.push(format!(
                "{:>7} {:>11} {:>7} {:>5} {:>4} {:>26} {:>22} {:>22} {:>10.0} {:>6}",
                c.workers,
                c.mix,
                c.payload,
                c.connections,
                runs.len(),
                format!("{r:.0} [{r0:.0}-{r1:.0}]"),
                format!("{p:.0} [{p0:.0}-{p1:.0}]"),
                format!("{q:.0} [{q0:.0}-{q1:.0}]"),
                s,
                audit
            ));
        }
        out
    }

    /// Writes the summary CSV (replacing it): one row per cell with median, min and max.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut w = csv::Writer::from_path(path)?;
        w.write_record([
            "workers",
            "mix",
            "payload",
            "connections",
            "runs",
            "req_s",
            "req_s_min",
            "req_s_max",
            "p50_us",
            "p50_us_min",
            "p50_us_max",
            "p99_us",
            "p99_us_min",
            "p99_us_max",
            "pushes_s",
            "pushes_s_min",
            "pushes_s_max",
        ])?;
        for (c, runs) in &self.cells {
            let col = |f: &dyn Fn(&Run) -> f64| spread(&mut runs.iter().map(f).collect::<Vec<_>>());
            let mut rec = vec![
                c.workers.to_string(),
                c.mix.clone(),
                c.payload.to_string(),
                c.connections.to_string(),
                runs.len().to_string(),
            ];
            for f in [
                &(|x: &Run| x.req_s) as &dyn Fn(&Run) -> f64,
                &|x: &Run| x.p50_us as f64,
                &|x: &Run| x.p99_us as f64,
                &|x: &Run| x.pushes_s,
            ] {
                let (m, lo, hi) = col(f);
                rec.extend([format!("{m:.0}"), format!("{lo:.0}"), format!("{hi:.0}")]);
            }
            w.write_record(&rec)?;
        }
        w.flush()?;
        Ok(())
    }
}

/// `results/x.csv` → `results/x-summary.csv`.
pub fn summary_path(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map_or_else(|| "sweep".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}-summary.csv"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_and_the_spread_of_a_cells_runs() {
        assert_eq!(spread(&mut [3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(spread(&mut [4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
        assert_eq!(spread(&mut []), (0.0, 0.0, 0.0));
        let mut s = Summary::default();
        let cell = Cell {
            workers: 2,
            mix: "mixed".into(),
            payload: 32,
            connections: 100,
        };
        for (req_s, ok) in [(100.0, true), (300.0, true), (200.0, false)] {
            let run = Run {
                req_s,
                p50_us: 5,
                p99_us: 9,
                pushes_s: 0.0,
                audit: Some(ok),
            };
            s.add(cell.clone(), run);
        }
        let t = s.table();
        assert!(
            t[1].contains("200 [100-300]") && t[1].ends_with("FAIL"),
            "{t:?}"
        );
        let path = std::env::temp_dir().join(format!("bc-summary-{}.csv", std::process::id()));
        s.write_csv(&path).expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            text.lines().nth(1),
            Some("2,mixed,32,100,3,200,100,300,5,5,5,9,9,9,0,0,0")
        );
        assert_eq!(
            summary_path(Path::new("r/x.csv")),
            Path::new("r/x-summary.csv")
        );
    }
}
