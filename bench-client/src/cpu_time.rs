//! CPU time, for the cost per request both sides report: the client's own (getrusage) and a
//! server's, every thread of its processes counted (/proc schedstat).

/// CPU seconds the given processes have run, every thread of each counted (io_uring's
/// io-wq workers, Redis's background threads), from /proc/PID/task/TID/schedstat (nanosecond
/// precision). A thread that exits takes its time with it: none of these servers' threads
/// come and go during a run but io-wq's, which idle 5 s before they exit.
pub fn server_cpu_seconds(pids: &[u32]) -> f64 {
    let ns_of = |path: std::path::PathBuf| {
        std::fs::read_to_string(path).ok().and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
    };
    pids.iter()
        .map(|p| match std::fs::read_dir(format!("/proc/{p}/task")) {
            Ok(tasks) => tasks
                .flatten()
                .filter_map(|t| ns_of(t.path().join("schedstat")))
                .sum::<u64>(),
            Err(_) => 0,
        })
        .sum::<u64>() as f64
        / 1e9
}

/// CPU seconds this process (every thread of the client) has run.
pub(crate) fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
        t(u.user_time()) + t(u.system_time())
    })
}
