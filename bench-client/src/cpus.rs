//! Placement: which CPUs the client's threads and the spawned server's processes may run on
//! (`--client-cpus`, `--server-cpus`). On a small machine the two otherwise float over the same
//! cores and each run measures a different mix of contention; pinned apart, runs repeat.

use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Parses a CPU list as `taskset -c` takes it: `0`, `0,2`, `1-3`, `0,2-3`.
pub fn parse(list: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo
            .parse()
            .map_err(|_| format!("bad CPU {lo:?} in {list:?}"))?;
        let hi: usize = hi
            .parse()
            .map_err(|_| format!("bad CPU {hi:?} in {list:?}"))?;
        if lo > hi || hi >= CpuSet::count() {
            return Err(format!("bad CPU range {part:?} in {list:?}"));
        }
        cpus.extend(lo..=hi);
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err(format!("no CPU in {list:?}"));
    }
    Ok(cpus)
}

/// The list as the CSV records it: `0 2 3` (spaces, so the field needs no quoting and gnuplot's
/// comma-separated columns stay where they are); empty for none.
pub fn format(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Restricts the calling thread (and what it forks or spawns afterwards) to `cpus`; nothing
/// for an empty list.
pub fn pin_current(cpus: &[usize]) -> nix::Result<()> {
    if cpus.is_empty() {
        return Ok(());
    }
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// The calling thread pinned to some CPUs until dropped, then back to what it had.
#[derive(Debug)]
pub struct Scoped(Option<CpuSet>);

impl Scoped {
    /// Pins the calling thread to `cpus` (nothing for an empty list).
    pub fn pin(cpus: &[usize]) -> nix::Result<Scoped> {
        if cpus.is_empty() {
            return Ok(Scoped(None));
        }
        let before = nix::sched::sched_getaffinity(Pid::from_raw(0))?;
        pin_current(cpus)?;
        Ok(Scoped(Some(before)))
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        if let Some(set) = &self.0 {
            let _ = sched_setaffinity(Pid::from_raw(0), set);
        }
    }
}

/// The client's thread count: `asked`, else one per pinned CPU, else 2. Warns when asked for
/// more threads than pinned CPUs (they would time-slice, and the waits show as latency).
pub fn client_threads(asked: Option<usize>, client_cpus: &[usize]) -> usize {
    match asked {
        Some(t) => {
            if !client_cpus.is_empty() && t > client_cpus.len() {
                eprintln!(
                    "bench-client: {t} client threads on {} pinned CPU(s) will time-slice; \
                     their scheduler waits show as latency (default: one thread per CPU)",
                    client_cpus.len()
                );
            }
            t
        }
        None if !client_cpus.is_empty() => client_cpus.len(),
        None => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_taskset_writes_them() {
        assert_eq!(parse("0"), Ok(vec![0]));
        assert_eq!(parse("0,2-3"), Ok(vec![0, 2, 3]));
        assert!(parse("3-1").is_err());
        assert!(parse("x").is_err());
        assert!(parse("").is_err());
        assert_eq!(format(&[0, 2, 3]), "0 2 3");
        assert_eq!(client_threads(None, &[]), 2);
        assert_eq!(client_threads(None, &[1]), 1);
        assert_eq!(client_threads(None, &[1, 2, 3]), 3);
        assert_eq!(client_threads(Some(4), &[1]), 4);
    }
}

/// A CPU list given on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuList(pub Vec<usize>);

impl std::str::FromStr for CpuList {
    type Err = String;
    fn from_str(s: &str) -> Result<CpuList, String> {
        parse(s).map(CpuList)
    }
}
