//! Repeated cells, summarised: per cell (a sweep's workers, mix, payload, connections; a peers
//! run's server, durability, mix, pipeline, connections) the median and the min–max of
//! throughput, p50, p99, pushes and CPU per request over its runs. `sweep` and `peers` print it
//! as their table and write it beside their CSV (`<out>-summary.csv`), which the charts draw
//! with error bars.

use std::path::{Path, PathBuf};

/// One cell: its coordinates, as (column name, value), in the order the table shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell(pub Vec<(&'static str, String)>);

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
    /// Server CPU per request, µs (0 when not known).
    pub server_cpu_us: f64,
    /// Client CPU per request, µs.
    pub client_cpu_us: f64,
    /// Push latency from send to delivery at each member, p50 and p99, µs (0: no pushes).
    pub push_p50_us: u64,
    /// Same, p99.
    pub push_p99_us: u64,
    /// The ledger audit after it: passed, failed, or none ran (chat-only mixes).
    pub audit: Option<bool>,
}

impl Run {
    /// The summarised figures of one run, as its CSV row states them (the audit from the row's
    /// `pass`, `FAIL` or empty).
    pub fn of(r: &crate::load::Results, row: &crate::report::CsvRow) -> Run {
        Run {
            req_s: r.total.requests as f64 / r.seconds,
            p50_us: r.total.latency_us.value_at_quantile(0.5),
            p99_us: r.total.latency_us.value_at_quantile(0.99),
            pushes_s: r.pushes as f64 / r.seconds,
            server_cpu_us: row.server_cpu_us_per_req.unwrap_or(0.0),
            client_cpu_us: row.client_cpu_us_per_req,
            push_p50_us: r.push_latency_us.value_at_quantile(0.5),
            push_p99_us: r.push_latency_us.value_at_quantile(0.99),
            audit: (!row.audit.is_empty()).then_some(row.audit == "pass"),
        }
    }
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

/// The runs of every cell, in the order the cells first ran.
#[derive(Debug, Default)]
pub struct Summary {
    cells: Vec<(Cell, Vec<Run>)>,
}

/// A summarised column: its name, and how to read it off a run.
type Figure = (&'static str, fn(&Run) -> f64);

/// The columns summarised, in table and CSV order.
const FIGURES: [Figure; 8] = [
    ("req_s", |x| x.req_s),
    ("p50_us", |x| x.p50_us as f64),
    ("p99_us", |x| x.p99_us as f64),
    ("pushes_s", |x| x.pushes_s),
    ("server_cpu_us", |x| x.server_cpu_us),
    ("client_cpu_us", |x| x.client_cpu_us),
    ("push_p50_us", |x| x.push_p50_us as f64),
    ("push_p99_us", |x| x.push_p99_us as f64),
];

impl Summary {
    /// Adds one run.
    pub fn add(&mut self, cell: Cell, run: Run) {
        match self.cells.iter_mut().find(|(c, _)| *c == cell) {
            Some((_, runs)) => runs.push(run),
            None => self.cells.push((cell, vec![run])),
        }
    }

    /// Median, min and max of figure `name` over the runs of the cell whose coordinates are
    /// `cell`; `None` for a cell without runs or an unknown figure.
    pub fn figure(&self, cell: &Cell, name: &str) -> Option<(f64, f64, f64)> {
        let (_, runs) = self.cells.iter().find(|(c, _)| c == cell)?;
        let (_, f) = FIGURES.iter().find(|(n, _)| *n == name)?;
        Some(spread(&mut runs.iter().map(f).collect::<Vec<_>>()))
    }

    /// The table people read: one line per cell, median [min–max].
    pub fn table(&self) -> Vec<String> {
        let Some((first, _)) = self.cells.first() else {
            return Vec::new();
        };
        let mut head: String = first.0.iter().map(|(n, _)| format!("{n:>12} ")).collect();
        head.push_str(&format!(
            "{:>4} {:>26} {:>22} {:>22} {:>10} {:>12} {:>6}",
            "runs",
            "req/s median [min-max]",
            "p50_us [min-max]",
            "p99_us [min-max]",
            "pushes/s",
            "srv_cpu_us",
            "audit"
        ));
        let mut out = vec![head];
        for (c, runs) in &self.cells {
            let col = |f: &dyn Fn(&Run) -> f64| spread(&mut runs.iter().map(f).collect::<Vec<_>>());
            let (r, r0, r1) = col(&|x| x.req_s);
            let (p, p0, p1) = col(&|x| x.p50_us as f64);
            let (q, q0, q1) = col(&|x| x.p99_us as f64);
            let (s, _, _) = col(&|x| x.pushes_s);
            let (cpu, _, _) = col(&|x| x.server_cpu_us);
            let audit = if runs.iter().all(|x| x.audit.is_none()) {
                ""
            } else if runs.iter().all(|x| x.audit != Some(false)) {
                "pass"
            } else {
                "FAIL"
            };
            let mut line: String = c.0.iter().map(|(_, v)| format!("{v:>12} ")).collect();
            line.push_str(&format!(
                "{:>4} {:>26} {:>22} {:>22} {:>10.0} {:>12.2} {:>6}",
                runs.len(),
                format!("{r:.0} [{r0:.0}-{r1:.0}]"),
                format!("{p:.0} [{p0:.0}-{p1:.0}]"),
                format!("{q:.0} [{q0:.0}-{q1:.0}]"),
                s,
                cpu,
                audit
            ));
            out.push(line);
        }
        out
    }

    /// Writes the summary CSV (replacing it): one row per cell, its coordinates, its number of
    /// runs, then median, min and max of each figure.
    pub fn write_csv(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut w = csv::Writer::from_path(path)?;
        if let Some((first, _)) = self.cells.first() {
            let mut head: Vec<String> = first.0.iter().map(|(n, _)| n.to_string()).collect();
            head.push("runs".into());
            for (name, _) in FIGURES {
                head.extend([
                    name.to_string(),
                    format!("{name}_min"),
                    format!("{name}_max"),
                ]);
            }
            w.write_record(&head)?;
        }
        for (c, runs) in &self.cells {
            let mut rec: Vec<String> = c.0.iter().map(|(_, v)| v.clone()).collect();
            rec.push(runs.len().to_string());
            for (name, f) in FIGURES {
                let (m, lo, hi) = spread(&mut runs.iter().map(f).collect::<Vec<_>>());
                if name.ends_with("cpu_us") {
                    rec.extend([format!("{m:.2}"), format!("{lo:.2}"), format!("{hi:.2}")]);
                } else {
                    rec.extend([format!("{m:.0}"), format!("{lo:.0}"), format!("{hi:.0}")]);
                }
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
        let cell = Cell(vec![
            ("workers", "2".into()),
            ("mix", "mixed".into()),
            ("payload", "32".into()),
            ("connections", "100".into()),
        ]);
        for (req_s, ok) in [(100.0, true), (300.0, true), (200.0, false)] {
            let run = Run {
                req_s,
                p50_us: 5,
                p99_us: 9,
                pushes_s: 0.0,
                server_cpu_us: req_s / 100.0,
                client_cpu_us: 2.0,
                push_p50_us: 0,
                push_p99_us: 0,
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
            text.lines().next(),
            Some("workers,mix,payload,connections,runs,req_s,req_s_min,req_s_max,p50_us,p50_us_min,p50_us_max,p99_us,p99_us_min,p99_us_max,pushes_s,pushes_s_min,pushes_s_max,server_cpu_us,server_cpu_us_min,server_cpu_us_max,client_cpu_us,client_cpu_us_min,client_cpu_us_max,push_p50_us,push_p50_us_min,push_p50_us_max,push_p99_us,push_p99_us_min,push_p99_us_max")
        );
        assert_eq!(
            text.lines().nth(1),
            Some("2,mixed,32,100,3,200,100,300,5,5,5,9,9,9,0,0,0,2.00,1.00,3.00,2.00,2.00,2.00,0,0,0,0,0,0")
        );
        assert_eq!(s.figure(&cell, "req_s"), Some((200.0, 100.0, 300.0)));
        assert_eq!(s.figure(&cell, "nope"), None);
        assert_eq!(
            summary_path(Path::new("r/x.csv")),
            Path::new("r/x-summary.csv")
        );
    }
}
