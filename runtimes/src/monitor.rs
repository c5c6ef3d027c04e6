//! Metrics reporting (Go's `Monitor`, PROTOCOL.md 8): a [`Monitor`] set in
//! [`Config::monitor`](crate::Config) receives each session's [`Metrics`] every
//! [`Config::monitor_interval`](crate::Config) and once more when the session closes, then
//! [`Monitor::flush`].
//!
//! Sessions have no threads of their own, so the periodic reports come from one
//! process-wide thread (`shmlink-monitor`), started when the first monitored session starts.
//! It holds sessions weakly: a dropped session leaves its list by itself. The same thread
//! runs the peer-stall check ([`Config::peer_stall_timeout`](crate::Config)) and drains idle
//! sessions ([`Config::idle_drain_interval`](crate::Config)).

use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::Metrics;
use crate::driver::{Inner, lock};

/// Receives sessions' metrics: periodically, and once when a session closes.
///
/// Called from the `shmlink-monitor` thread, the last report of a session shortly after it
/// closes; keep it short (hand the numbers to an exporter). A panic in it is caught and
/// logged.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use shmlink::{Config, Metrics, Monitor, SessionInfo};
///
/// #[derive(Debug)]
/// struct Log;
///
/// impl Monitor for Log {
///     fn on_emit_session_metrics(&self, session: &SessionInfo, m: &Metrics) {
///         println!(
///             "session {} sent {} bytes, {} fallbacks, {} of {} shared bytes in use",
///             session.id,
///             m.performance.out_flow_bytes,
///             m.stability.fallback_write_count,
///             m.share_memory.all_in_used_share_memory_in_bytes,
///             m.share_memory.capacity_of_share_memory_in_bytes,
///         );
///     }
/// }
///
/// let config = Config {
///     monitor: Some(Arc::new(Log)),
///     monitor_interval: Duration::from_secs(10),
///     ..Config::default()
/// };
/// ```
pub trait Monitor: Send + Sync + std::fmt::Debug {
    /// One session's metrics (Go's `OnEmitSessionMetrics`).
    fn on_emit_session_metrics(&self, session: &SessionInfo, metrics: &Metrics);

    /// Called after a session's last report (Go's `Flush`).
    fn flush(&self) {}
}

/// Which session a report is about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session's id, unique in this process; the `session` field of its log events.
    pub id: u64,
    /// Whether this process is the session's client (it made the shared memory).
    pub is_client: bool,
    /// Whether this is the session's last report (it has closed).
    pub closed: bool,
}

struct Entry {
    session: Weak<Inner>,
    due: Instant,
    duty: Duty,
}

enum Duty {
    /// Periodic metrics reports.
    Report,
    /// The peer-stall check; its state is looked at outside the registry lock (reading a
    /// session's progress takes the session's own locks).
    Progress(Arc<Mutex<Progress>>),
    /// Taking in what the peer sent while nothing waits on the session.
    Drain(Arc<Drain>),
}

/// The idle drain of one session.
struct Drain {
    every: Duration,
    /// What [`Inner::activity_mark`] said at the last look.
    seen: Mutex<Option<(i64, u64)>>,
}

impl Drain {
    /// Whether nobody worked on the session for a whole interval: no element taken from the
    /// receive queue and no pump by an owner since the last look. A session in use is left to
    /// its waiters, so the drain never competes with them; one whose owner stopped being
    /// polled (an abandoned read) or that nothing waits on is quiet. (The head lies in shared
    /// memory: a peer rewriting it can only make us drain a tick late or early.)
    fn quiet(&self, session: &Inner) -> bool {
        let mark = session.activity_mark();
        let mut seen = lock(&self.seen);
        let quiet = mark.is_some() && *seen == mark;
        *seen = mark;
        quiet
    }
}

/// What the peer had taken when last seen, and since when something has waited for it
/// with nothing taken (first seen at a check, so the silence is never overestimated).
struct Progress {
    timeout: Duration,
    head: i64,
    out: usize,
    since: Option<Instant>,
}

impl Progress {
    fn every(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(250))
    }

    /// Looks at the session; `Some(silence)` once the peer has taken nothing for the timeout
    /// while something waited for it.
    fn check(&mut self, session: &Inner, now: Instant) -> Option<Duration> {
        let (waiting, head, out) = session.peer_progress();
        let moved = head != self.head || out < self.out;
        self.head = head;
        self.out = out;
        if !waiting {
            self.since = None;
            return None;
        }
        if moved || self.since.is_none() {
            self.since = Some(now);
            return None;
        }
        let silent = now.saturating_duration_since(self.since.unwrap_or(now));
        (silent >= self.timeout).then_some(silent)
    }
}

#[derive(Default)]
struct Registry {
    entries: Mutex<Vec<Entry>>,
    /// Sessions that closed, for their last report (made on the monitor thread: the close
    /// may run under locks a monitor must not meet).
    closed: Mutex<Vec<Arc<Inner>>>,
    changed: Condvar,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    static THREAD: OnceLock<()> = OnceLock::new();
    let registry = REGISTRY.get_or_init(Registry::default);
    THREAD.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("shmlink-monitor".into())
            .spawn(|| run(registry));
        if let Err(e) = spawned {
            tracing::warn!(target: "shmlink::monitor", error = %e, "cannot start the monitor thread; no periodic reports");
        }
    });
    registry
}

/// Reports `session` every `interval` until it closes or is dropped.
pub(crate) fn watch(session: &Arc<Inner>, interval: Duration) {
    add(Entry {
        session: Arc::downgrade(session),
        due: Instant::now() + interval,
        duty: Duty::Report,
    });
}

/// Closes `session` if the peer takes nothing it was sent for `timeout`.
pub(crate) fn watch_progress(session: &Arc<Inner>, timeout: Duration) {
    let progress = Progress {
        timeout,
        head: i64::MIN,
        out: 0,
        since: None,
    };
    add(Entry {
        session: Arc::downgrade(session),
        due: Instant::now() + progress.every(),
        duty: Duty::Progress(Arc::new(Mutex::new(progress))),
    });
}

/// Drains `session` every `interval` while nothing waits on it.
pub(crate) fn watch_idle(session: &Arc<Inner>, interval: Duration) {
    add(Entry {
        session: Arc::downgrade(session),
        due: tick_after(Instant::now(), interval),
        duty: Duty::Drain(Arc::new(Drain {
            every: interval,
            seen: Mutex::new(None),
        })),
    });
}

/// The first multiple of `every` (counted from a process-wide start) after `now`: sessions
/// drained at the same interval come due together, so the thread wakes once for all of them.
fn tick_after(now: Instant, every: Duration) -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    let every_ns = every.as_nanos().max(1);
    let ticks = now.saturating_duration_since(start).as_nanos() / every_ns + 1;
    let after = u64::try_from(ticks.saturating_mul(every_ns)).unwrap_or(u64::MAX);
    start + Duration::from_nanos(after)
}

fn add(entry: Entry) {
    let registry = registry();
    lock(&registry.entries).push(entry);
    registry.changed.notify_one();
}

/// Queues `session`'s last report (and the flush) for the monitor thread.
pub(crate) fn closed(session: Arc<Inner>) {
    let registry = registry();
    lock(&registry.closed).push(session);
    // Under the entries lock: the monitor thread checks `closed` under it before it waits.
    let _entries = lock(&registry.entries);
    registry.changed.notify_one();
}

/// Socket reads (of up to 64 KiB) per session per look of the idle drain.
const DRAIN_READS: usize = 16;

/// Sessions per `poll(2)` of the idle drain (the descriptors live on the stack).
const POLL_BATCH: usize = 32;

/// Drains the quiet sessions due: a `poll(2)` per [`POLL_BATCH`] of their sockets, then a
/// pump of each whose socket has bytes or whose queue or unsent frames hold something. A
/// session that a reader took meanwhile is skipped by the pump itself (it only tries the
/// lock). Allocates nothing.
fn drain_idle(sessions: &[(Arc<Inner>, Arc<Drain>)]) {
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    for batch in sessions.chunks(POLL_BATCH) {
        // Slots past the batch repeat its last socket and are not passed to poll.
        let mut fds: [PollFd<'_>; POLL_BATCH] = std::array::from_fn(|i| {
            PollFd::from_borrowed_fd(batch[i.min(batch.len() - 1)].0.socket(), PollFlags::IN)
        });
        let fds = &mut fds[..batch.len()];
        // A failed poll (EINTR, ENOMEM) reads as "maybe readable": the pump finds out.
        let polled = rustix::event::poll(fds, Some(&now)).is_ok();
        for ((session, drain), fd) in batch.iter().zip(fds.iter()) {
            if !polled || !fd.revents().is_empty() || session.has_work_waiting() {
                // A panic here (a waker, a tracing subscriber) must not end the thread that
                // every session's reports, checks and drains depend on.
                unless_panics(session, "a drain", || session.rescue(DRAIN_READS));
                // What this pump took is not a waiter's doing.
                *lock(&drain.seen) = session.activity_mark();
            }
        }
    }
}

/// Runs `work` for `session` on the monitor thread; a panic in it is logged, not fatal.
fn unless_panics(session: &Inner, what: &str, work: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
        tracing::warn!(target: "shmlink::monitor", session = session.id, "{what} panicked");
    }
}

/// One report to `monitor` about `session`; a panicking monitor is logged, not fatal.
fn emit(monitor: &dyn Monitor, session: &Inner, closed: bool) {
    unless_panics(session, "the monitor", || {
        emit_now(monitor, session, closed)
    });
}

fn emit_now(monitor: &dyn Monitor, session: &Inner, closed: bool) {
    let info = SessionInfo {
        id: session.id,
        is_client: session.is_client(),
        closed,
    };
    monitor.on_emit_session_metrics(&info, &session.metrics());
    if closed {
        monitor.flush();
    }
}

fn run(registry: &Registry) {
    // Kept across turns (emptied after each): a turn allocates nothing once they have grown,
    // so a process moving messages sees no allocation of ours every `idle_drain_interval`.
    let mut due = Vec::with_capacity(64);
    let mut checks = Vec::with_capacity(64);
    let mut idle = Vec::with_capacity(64);
    let mut release = Vec::with_capacity(64);
    let mut entries = lock(&registry.entries);
    loop {
        let now = Instant::now();
        // Only due entries are upgraded, and no session is dropped under the lock: the last
        // reference may be ours, and releasing a session (unmapping, closing, dropping its
        // Monitor) must not run where `add` and `closed` wait.
        entries.retain_mut(|e| {
            if e.session.strong_count() == 0 {
                return false;
            }
            if e.due > now {
                return true;
            }
            let Some(session) = e.session.upgrade() else {
                return false;
            };
            if session.is_closed() {
                release.push(session);
                return false; // its last report came from the close
            }
            match &e.duty {
                Duty::Report => {
                    let interval = session.settings.monitor.as_ref().map(|m| m.1);
                    e.due = now + interval.unwrap_or(Duration::from_secs(30));
                    due.push(session);
                }
                Duty::Progress(progress) => {
                    e.due = now + lock(progress).every();
                    checks.push((session, Arc::clone(progress)));
                }
                Duty::Drain(drain) => {
                    e.due = tick_after(now, drain.every);
                    idle.push((session, Arc::clone(drain)));
                }
            }
            true
        });
        let next = entries.iter().map(|e| e.due).min();
        // Reports and checks run without the lock: a monitor may take its time, sessions may
        // start, and a session's own locks are never taken under the registry's.
        drop(entries);
        release.clear();
        idle.retain(|(session, drain)| drain.quiet(session));
        drain_idle(&idle);
        idle.clear();
        for (session, progress) in checks.drain(..) {
            let silent = lock(&progress).check(&session, now);
            if let Some(silent) = silent {
                session.stalled(silent);
            }
        }
        for session in due.drain(..) {
            if let Some((monitor, _)) = &session.settings.monitor {
                emit(&**monitor, &session, false);
            }
        }
        // Last reports after the periodic ones of the same turn: never a periodic report
        // after a session's last.
        let finished = std::mem::take(&mut *lock(&registry.closed));
        for session in finished {
            if let Some((monitor, _)) = &session.settings.monitor {
                emit(&**monitor, &session, true);
            }
        }
        entries = lock(&registry.entries);
        if !lock(&registry.closed).is_empty() {
            continue;
        }
        entries = match next {
            Some(at) => {
                let wait = at.saturating_duration_since(Instant::now());
                registry
                    .changed
                    .wait_timeout(entries, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => registry
                .changed
                .wait(entries)
                .unwrap_or_else(|e| e.into_inner()),
        };
    }
}
