//! `bench-client handshakes`: how many new connections a server takes per second, each one
//! opened, brought to its first answer (TLS: a full handshake, certificate verified; then a
//! HELLO and its answer) and closed. Measures the cost TLS adds where it is paid once, at the
//! start of a connection, which the steady-state mixes do not see.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::cli::HandshakesArgs;

/// One thread's tally: connections done, failures, latency of each (connect to answer), µs.
type Tally = (u64, u64, Histogram<u64>);

/// `bench-client handshakes`.
pub fn handshakes(a: HandshakesArgs) -> anyhow::Result<()> {
    let addr = a.target.resolve()?;
    let tls = match a.target.tls()? {
        Some(t) if !a.resume => Some(t.without_resumption()),
        other => other,
    };
    let threads = crate::cpus::client_threads(a.threads, &a.client_cpus());
    let cpus = a.client_cpus();
    let warm_end = Instant::now() + Duration::from_secs_f64(a.warmup);
    let end = warm_end + Duration::from_secs_f64(a.duration);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (tls, cpus) = (tls.clone(), cpus.clone());
            std::thread::spawn(move || -> anyhow::Result<Tally> {
                if !cpus.is_empty() {
                    placement::pin_current(&[cpus[t % cpus.len()]])?;
                }
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let (mut done, mut failed) = (0u64, 0u64);
                loop {
                    let start = Instant::now();
                    if start >= end {
                        break;
                    }
                    let ok =
                        crate::Client::connect_with(addr, Duration::from_secs(5), tls.as_ref())
                            .and_then(|mut c| c.hello("bench-client handshakes"))
                            .is_ok();
                    if start < warm_end {
                        continue;
                    }
                    if ok {
                        done += 1;
                        let _ = hist.record(start.elapsed().as_micros() as u64);
                    } else {
                        failed += 1;
                    }
                }
                Ok((done, failed, hist))
            })
        })
        .collect();
    let (mut done, mut failed) = (0u64, 0u64);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for h in handles {
        let (d, f, th) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a handshake thread panicked"))??;
        done += d;
        failed += f;
        hist.add(&th)?;
    }
    println!(
        "{} connections/s ({} in {:.1} s, {} failed) over {}, {threads} client thread(s): \
         connect to first answer p50 {} us, p99 {} us, max {} us",
        (done as f64 / a.duration).round(),
        done,
        a.duration,
        failed,
        match (&tls, a.resume) {
            (None, _) => "TCP",
            (Some(_), false) => "TLS, full handshakes",
            (Some(_), true) => "TLS, resumed sessions",
        },
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    anyhow::ensure!(failed == 0, "{failed} connections failed");
    Ok(())
}
