//! What the master decides, without doing any of it: which child to start and when, how long a
//! crashing child waits before its restart, and how a shutdown proceeds. The master
//! (`master.rs`) is the shell around it: it forks, reaps, signals and sleeps, tells the
//! supervisor what happened (`started`, `on_exit`, `on_signals`) and does what [`Supervisor::due`]
//! returns. Time is passed in, so every decision is a unit test (below, `supervisor_*`).
//!
//! The rules:
//! - every worker and, with a journal, the journal writer start at once; on a cluster node the
//!   bridge starts first and the workers only once it said it is ready (connected and caught
//!   up), the first time (a restarted bridge does not stop the workers);
//! - a child that dies is restarted at once if it lived at least [`YOUNG`]; one that dies younger
//!   waits a backoff that doubles on each such death, from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]
//!   (a crash loop costs a restart every 5 s, not a busy fork loop);
//! - the first SIGINT/SIGTERM stops the workers (SIGTERM: they drain for their grace); once none
//!   is left the writer is told to stop (it writes what is left and a final checkpoint); once it
//!   has exited too, the master exits 0. Nothing is restarted while stopping;
//! - a second signal, or workers still running [`STOP_GRACE`] after the first, gets SIGKILL to
//!   every child; a second signal makes the exit code 1. The bridge stops with the writer.

use std::time::{Duration, Instant};

/// A child of the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    /// Worker `i`.
    Worker(usize),
    /// The journal writer.
    Writer,
    /// The cluster bridge.
    Bridge,
}

/// What the master must do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fork this child.
    Start(Child),
    /// SIGTERM to this running child.
    Term(Child),
    /// SIGKILL to this running child.
    Kill(Child),
    /// Every child is gone after a stop: exit with this code.
    Exit(i32),
}

/// A child that lived less than this is restarted after a backoff.
pub const YOUNG: Duration = Duration::from_secs(2);
/// The first backoff of a child that died young.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long workers get to drain after the first signal before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Slot {
    running: bool,
    started: Instant,
    backoff: Duration,
    /// When to start it (None: running, or not to be restarted).
    start_at: Option<Instant>,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            running: false,
            started: now,
            backoff: Duration::ZERO,
            start_at: Some(now),
        }
    }

    /// It died at `now`: when it may start again.
    fn died(&mut self, now: Instant) {
        self.running = false;
        self.backoff = if now.saturating_duration_since(self.started) < YOUNG {
            (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
        } else {
            Duration::ZERO
        };
        self.start_at = Some(now + self.backoff);
    }
}

/// The master's decisions: children, their restarts, and the shutdown.
#[derive(Debug, Clone)]
pub struct Supervisor {
    workers: Vec<Slot>,
    writer: Option<Slot>,
    bridge: Option<Slot>,
    /// The bridge said once that it is ready: workers may start.
    bridge_ready: bool,
    /// The first signal came: the deadline for the workers to be gone.
    stopping: Option<Instant>,
    signals: u32,
    writer_told: bool,
    exited: bool,
}

impl Supervisor {
    /// `workers` workers and, if `journal`, a journal writer, all due to start at `now`.
    pub fn new(workers: usize, journal: bool, now: Instant) -> Supervisor {
        Supervisor::with_bridge(workers, journal, false, now)
    }

    /// The same, and a cluster bridge if `bridge`: the workers then wait for [`Supervisor::ready`].
    pub fn with_bridge(workers: usize, journal: bool, bridge: bool, now: Instant) -> Supervisor {
        Supervisor {
            workers: (0..workers).map(|_| Slot::new(now)).collect(),
            writer: journal.then(|| Slot::new(now)),
            bridge: bridge.then(|| Slot::new(now)),
            bridge_ready: !bridge,
            stopping: None,
            signals: 0,
            writer_told: false,
            exited: false,
        }
    }

    fn slot(&mut self, c: Child) -> Option<&mut Slot> {
        match c {
            Child::Worker(i) => self.workers.get_mut(i),
            Child::Writer => self.writer.as_mut(),
            Child::Bridge => self.bridge.as_mut(),
        }
    }

    /// The bridge is connected and caught up: the workers may start.
    pub fn ready(&mut self) {
        self.bridge_ready = true;
    }

    /// True once the workers may start.
    pub fn is_ready(&self) -> bool {
        self.bridge_ready
    }

    /// The master forked `c` at `now`.
    pub fn started(&mut self, c: Child, now: Instant) {
        if let Some(s) = self.slot(c) {
            debug_assert!(!s.running, "{c:?} started twice");
            s.running = true;
            s.started = now;
            s.start_at = None;
        }
    }

    /// `c` exited at `now`. Returns true when it will be restarted (a worker's restart is
    /// counted in its metrics).
    pub fn on_exit(&mut self, c: Child, now: Instant) -> bool {
        let stopping = self.stopping.is_some();
        let Some(s) = self.slot(c) else {
            return false;
        };
        s.died(now);
        if stopping {
            s.start_at = None;
        }
        !stopping
    }

    /// True once the first stop signal came.
    pub fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// `total` stop signals have arrived since the start (the master counts them in a handler).
    pub fn on_signals(&mut self, total: u32, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if total > self.signals && self.stopping.is_none() {
            self.stopping = Some(now + STOP_GRACE);
            for s in &mut self.workers {
                s.start_at = None;
            }
            for s in [&mut self.writer, &mut self.bridge].into_iter().flatten() {
                s.start_at = None;
            }
            out.extend(self.running_workers().map(Action::Term));
        }
        self.signals = self.signals.max(total);
        out
    }

    fn running_workers(&self) -> impl Iterator<Item = Child> + '_ {
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.running)
            .map(|(i, _)| Child::Worker(i))
    }

    fn writer_running(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| w.running)
    }

    fn bridge_running(&self) -> bool {
        self.bridge.as_ref().is_some_and(|w| w.running)
    }

    /// The exit code the master will have: 1 after a second signal, else 0.
    pub fn code(&self) -> i32 {
        i32::from(self.signals >= 2)
    }

    /// What is due at `now`: starts whose time came, or the steps of a shutdown.
    pub fn due(&mut self, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(deadline) = self.stopping else {
            // The writer and the bridge first: workers' answers wait for them.
            for (c, s) in [(Child::Writer, &self.writer), (Child::Bridge, &self.bridge)] {
                if let Some(w) = s {
                    if !w.running && w.start_at.is_some_and(|t| now >= t) {
                        out.push(Action::Start(c));
                    }
                }
            }
            if !self.bridge_ready {
                return out;
            }
            for (i, s) in self.workers.iter().enumerate() {
                if !s.running && s.start_at.is_some_and(|t| now >= t) {
                    out.push(Action::Start(Child::Worker(i)));
                }
            }
            return out;
        };
        if self.signals >= 2 || now >= deadline {
            out.extend(self.running_workers().map(Action::Kill));
            if self.writer_running() {
                out.push(Action::Kill(Child::Writer));
            }
            if self.bridge_running() {
                out.push(Action::Kill(Child::Bridge));
            }
        }
        if self.running_workers().next().is_none() {
            // The workers are gone, their answers flushed: the writer writes what is left, the
            // bridge waits for the acks in flight.
            if self.writer_running() || self.bridge_running() {
                if !self.writer_told {
                    self.writer_told = true;
                    if self.writer_running() {
                        out.push(Action::Term(Child::Writer));
                    }
                    if self.bridge_running() {
                        out.push(Action::Term(Child::Bridge));
                    }
                }
            } else if !self.exited {
                self.exited = true;
                out.push(Action::Exit(self.code()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Starts whatever is due at `now`, as the master would.
    fn start_due(s: &mut Supervisor, now: Instant) -> Vec<Child> {
        let mut started = Vec::new();
        for a in s.due(now) {
            match a {
                Action::Start(c) => {
                    s.started(c, now);
                    started.push(c);
                }
                other => panic!("only starts expected, got {other:?}"),
            }
        }
        started
    }

    #[test]
    fn supervisor_starts_the_writer_then_every_worker_at_once() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(3, true, t0);
        assert_eq!(
            start_due(&mut s, t0),
            vec![
                Child::Writer,
                Child::Worker(0),
                Child::Worker(1),
                Child::Worker(2)
            ]
        );
        assert!(s.due(t0 + ms(10)).is_empty(), "nothing twice");
        let mut none = Supervisor::new(1, false, t0);
        assert_eq!(start_due(&mut none, t0), vec![Child::Worker(0)]);
    }

    #[test]
    fn supervisor_restarts_a_worker_at_once_after_a_long_life() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(2, false, t0);
        start_due(&mut s, t0);
        let t = t0 + Duration::from_secs(60);
        assert!(s.on_exit(Child::Worker(1), t), "will be restarted");
        assert_eq!(start_due(&mut s, t), vec![Child::Worker(1)]);
    }

    #[test]
    fn supervisor_backs_off_a_crash_loop_doubling_to_five_seconds() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1, false, t0);
        start_due(&mut s, t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            now += ms(50); // dies young, every time
            s.on_exit(Child::Worker(0), now);
            let died = now;
            // Not before its backoff ...
            let mut t = died;
            while start_due(&mut s, t).is_empty() {
                t += ms(10);
                assert!(t < died + Duration::from_secs(6), "never restarted");
            }
            waits.push((t - died).as_millis() as u64);
            now = t;
        }
        assert_eq!(
            waits,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000],
            "doubling from 100 ms, capped at 5 s"
        );
        // A life longer than YOUNG resets it.
        now += Duration::from_secs(3);
        s.on_exit(Child::Worker(0), now);
        assert_eq!(start_due(&mut s, now), vec![Child::Worker(0)]);
    }

    #[test]
    fn supervisor_restarts_the_journal_writer_with_its_own_backoff() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1, true, t0);
        start_due(&mut s, t0);
        // The writer dies young twice; the worker is not touched.
        s.on_exit(Child::Writer, t0 + ms(10));
        assert!(start_due(&mut s, t0 + ms(50)).is_empty());
        assert_eq!(start_due(&mut s, t0 + ms(110)), vec![Child::Writer]);
        s.on_exit(Child::Writer, t0 + ms(120));
        assert!(start_due(&mut s, t0 + ms(300)).is_empty());
        assert_eq!(start_due(&mut s, t0 + ms(320)), vec![Child::Writer]);
    }

    #[test]
    fn supervisor_drains_on_the_first_signal_then_stops_the_writer_then_exits_0() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(2, true, t0);
        start_due(&mut s, t0);
        let t = t0 + Duration::from_secs(10);
        assert_eq!(
            s.on_signals(1, t),
            vec![
                Action::Term(Child::Worker(0)),
                Action::Term(Child::Worker(1))
            ],
            "the workers drain; the writer keeps running for them"
        );
        assert!(
            s.on_signals(1, t).is_empty(),
            "the same signal count again: nothing new"
        );
        assert!(s.due(t + ms(20)).is_empty(), "workers still draining");
        assert!(
            !s.on_exit(Child::Worker(0), t + ms(30)),
            "no restart while stopping"
        );
        assert!(s.due(t + ms(40)).is_empty());
        s.on_exit(Child::Worker(1), t + ms(50));
        assert_eq!(s.due(t + ms(60)), vec![Action::Term(Child::Writer)]);
        assert!(s.due(t + ms(80)).is_empty(), "told once");
        s.on_exit(Child::Writer, t + ms(90));
        assert_eq!(s.due(t + ms(100)), vec![Action::Exit(0)]);
        assert!(s.due(t + ms(120)).is_empty(), "exit once");
    }

    #[test]
    fn supervisor_kills_everything_on_a_second_signal_and_exits_1() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(2, true, t0);
        start_due(&mut s, t0);
        s.on_signals(1, t0 + ms(10));
        assert!(s.on_signals(2, t0 + ms(20)).is_empty());
        assert_eq!(
            s.due(t0 + ms(20)),
            vec![
                Action::Kill(Child::Worker(0)),
                Action::Kill(Child::Worker(1)),
                Action::Kill(Child::Writer)
            ]
        );
        for c in [Child::Worker(0), Child::Worker(1), Child::Writer] {
            s.on_exit(c, t0 + ms(30));
        }
        assert_eq!(s.due(t0 + ms(40)), vec![Action::Exit(1)]);
    }

    #[test]
    fn supervisor_starts_workers_only_once_the_bridge_is_ready_and_stops_it_last() {
        let t0 = Instant::now();
        let mut s = Supervisor::with_bridge(2, false, true, t0);
        assert_eq!(start_due(&mut s, t0), vec![Child::Bridge]);
        assert!(start_due(&mut s, t0 + ms(500)).is_empty(), "not ready yet");
        s.ready();
        assert_eq!(
            start_due(&mut s, t0 + ms(600)),
            vec![Child::Worker(0), Child::Worker(1)]
        );
        // A bridge that dies is restarted; the workers keep running.
        s.on_exit(Child::Bridge, t0 + Duration::from_secs(10));
        assert_eq!(
            start_due(&mut s, t0 + Duration::from_secs(10)),
            vec![Child::Bridge]
        );
        let t = t0 + Duration::from_secs(20);
        assert_eq!(
            s.on_signals(1, t),
            vec![
                Action::Term(Child::Worker(0)),
                Action::Term(Child::Worker(1))
            ]
        );
        s.on_exit(Child::Worker(0), t + ms(10));
        s.on_exit(Child::Worker(1), t + ms(10));
        assert_eq!(s.due(t + ms(20)), vec![Action::Term(Child::Bridge)]);
        s.on_exit(Child::Bridge, t + ms(30));
        assert_eq!(s.due(t + ms(40)), vec![Action::Exit(0)]);
    }

    #[test]
    fn supervisor_kills_workers_that_outlive_the_grace() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(1, false, t0);
        start_due(&mut s, t0);
        s.on_signals(1, t0);
        assert!(s.due(t0 + STOP_GRACE - ms(1)).is_empty());
        assert_eq!(s.due(t0 + STOP_GRACE), vec![Action::Kill(Child::Worker(0))]);
        s.on_exit(Child::Worker(0), t0 + STOP_GRACE + ms(5));
        assert_eq!(
            s.due(t0 + STOP_GRACE + ms(10)),
            vec![Action::Exit(0)],
            "killed after the grace is still a clean stop: one signal"
        );
    }

    #[test]
    fn supervisor_does_not_start_a_child_that_was_waiting_for_its_backoff_once_stopping() {
        let t0 = Instant::now();
        let mut s = Supervisor::new(2, false, t0);
        start_due(&mut s, t0);
        s.on_exit(Child::Worker(1), t0 + ms(10)); // waits 100 ms
        s.on_signals(1, t0 + ms(20));
        s.on_exit(Child::Worker(0), t0 + ms(30));
        assert_eq!(s.due(t0 + ms(200)), vec![Action::Exit(0)]);
    }
}
