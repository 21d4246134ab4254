//! Placement: which CPUs the client's threads and the spawned server's processes may run on
//! (`--client-cpus`, `--server-cpus`). On a small machine the two otherwise float over the same
//! cores and each run measures a different mix of contention; pinned apart, runs repeat. The
//! lists and the pinning are the `placement` crate's (the server's `--cpu-affinity` uses it too).

pub use placement::{format, parse, pin_current, Scoped};

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
    fn client_threads_default_to_one_per_pinned_cpu() {
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
