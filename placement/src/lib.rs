//! Placement: which CPUs a process or thread may run on. One parser for CPU lists as
//! `taskset -c` writes them, the calling thread's allowed set, and pinning (which what it forks
//! or spawns afterwards inherits). The server's `--cpu-affinity` and the bench client's
//! `--server-cpus` / `--client-cpus` both go through here.

#![forbid(unsafe_code)]

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// Parses a CPU list as `taskset -c` takes it: `0`, `0,2`, `1-3`, `0,2-3`; sorted, each CPU
/// once, none past what the kernel's CPU set holds.
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

/// The list as a CSV records it: `0 2 3` (spaces, so the field needs no quoting and gnuplot's
/// comma-separated columns stay where they are); empty for none.
pub fn format(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CPUs the calling thread may run on (its affinity mask), in order; if the kernel will not
/// say, every CPU the standard library counts.
pub fn allowed() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
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
        let before = sched_getaffinity(Pid::from_raw(0))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_as_taskset_writes_them() {
        assert_eq!(parse("0"), Ok(vec![0]));
        assert_eq!(parse("0,2-3"), Ok(vec![0, 2, 3]));
        assert_eq!(parse("3,1-3"), Ok(vec![1, 2, 3]), "sorted, once each");
        assert!(parse("3-1").is_err());
        assert!(parse("x").is_err());
        assert!(parse("").is_err());
        assert!(parse("0-100000").is_err(), "past the kernel's CPU set");
        assert_eq!(format(&[0, 2, 3]), "0 2 3");
    }

    #[test]
    fn a_scoped_pin_is_undone_when_dropped() {
        let before = allowed();
        assert!(!before.is_empty());
        {
            let _pin = Scoped::pin(&before[..1]).expect("pin");
            assert_eq!(allowed(), &before[..1]);
        }
        assert_eq!(allowed(), before);
    }
}
