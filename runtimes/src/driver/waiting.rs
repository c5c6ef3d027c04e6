//! Waiting without a herd: the session's waiter registry (`shmlink_core::waiters`) behind a
//! lock, the waker the reactor holds for the socket, and [`Inner::poll_wait`], the heart of
//! every read and accept.
//!
//! At any moment at most one waiter owns the pump: it drains the queue, reads the socket
//! (only the owner polls it, the blocking adapter too), spins or sleeps on the socket. Every
//! other waiter sleeps on its own waker and is woken only when its stream received something
//! or to take the pump over. Leaving (data, timeout, error, a dropped future) hands the pump
//! to the oldest reader still waiting, as part of the exit path. No waker is called while a
//! lock is held: the registry returns the one to call, and pumps collect theirs.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use shmlink_core::queue::Drain;
use shmlink_core::waiters::{Kind, Registry, Ticket};

use super::spin::Spin;
use super::{Inner, lock};
use crate::Error;
use crate::error::CloseReason;
use crate::rt::Timer;

/// Socket reads (of up to 64 KiB) per pump of a waiter: a flood of frames cannot hold a
/// reader past its deadline, and other tasks on its thread run between budgets.
pub(super) const PUMP_READS: usize = 16;
/// How often a spinning owner reads the socket (the peer sends no Polling while the flag is
/// up; only fallback data, closes or the end come that way).
const SOCKET_EVERY: Duration = Duration::from_micros(20);
/// A waiter whose last wait ended with data within this is "recent": when an owner leaves,
/// the pump is handed to it at once rather than left vacant for a grace period.
const RECENT: Duration = Duration::from_millis(2);
/// Rounds of "the flag went down but elements came meanwhile" before an owner yields.
const LOWER_ROUNDS: u32 = 8;

/// The waiters of one session.
#[derive(Default)]
pub(crate) struct Waiters {
    reg: Mutex<Registry>,
}

impl Waiters {
    pub(super) fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        lock(&self.reg)
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// The socket became readable: wake the owner, or a successor when the pump is vacant.
    fn wake_by_ref(self: &Arc<Self>) {
        let next = lock(&self.reg).wake_owner();
        if let Some(w) = next {
            w.wake();
        }
    }
}

/// One waiter's bookkeeping (a stream's read side, or an accept), kept across its waits.
pub(crate) struct WaitSlot {
    ticket: Ticket,
    kind: Kind,
    timer: Option<Box<dyn Timer>>,
    spin: Spin,
    /// Wakers a pump collected, called once its locks are released (the vector keeps its
    /// room, so a pump allocates nothing).
    pub(super) wakes: Vec<Waker>,
    /// When the socket was last read by this waiter while it spun.
    socket_at: Option<Instant>,
    /// When this waiter's last wait ended with data.
    last_data: Option<Instant>,
}

impl WaitSlot {
    /// A stream reader's slot.
    pub(crate) fn new() -> Self {
        Self::of(Kind::Reader)
    }

    /// An accept's slot: woken for the pump only when no reader waits.
    pub(crate) fn acceptor() -> Self {
        Self::of(Kind::Acceptor)
    }

    fn of(kind: Kind) -> Self {
        Self {
            ticket: None,
            kind,
            timer: None,
            spin: Spin::default(),
            wakes: Vec::new(),
            socket_at: None,
            last_data: None,
        }
    }

    fn engaged(&self) -> bool {
        self.ticket.is_some() || self.spin.spinning()
    }
}

impl std::fmt::Debug for WaitSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitSlot")
            .field("ticket", &self.ticket)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Inner {
    /// Waits until `check` yields: the heart of every read and accept.
    ///
    /// `check` looks at the waiter's own buffer and, when it returns `None`, must have
    /// registered `cx`'s waker where deliveries wake it. Cancellation: a caller that drops
    /// its future between polls must call [`forget`](Self::forget) (the `Forget` guard of
    /// stream.rs); one that cannot (a bare `poll_read` abandoned by its caller) is found by
    /// the monitor, which takes the pump from it.
    pub(crate) fn poll_wait<T>(
        &self,
        cx: &mut Context<'_>,
        slot: &mut WaitSlot,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut Context<'_>) -> Option<Result<T, Error>>,
    ) -> Poll<Result<T, Error>> {
        if let Some(out) = check(cx) {
            if slot.engaged() {
                self.leave(slot, true);
            }
            return Poll::Ready(out);
        }
        let mut rounds = 0;
        loop {
            if self.is_closed() {
                self.leave(slot, false);
                return Poll::Ready(check(cx).unwrap_or_else(|| Err(self.close_error())));
            }
            let owner = {
                let mut reg = self.waiters.registry();
                reg.register(&mut slot.ticket, slot.kind, cx.waker());
                let recent = slot.last_data.is_some_and(|t| t.elapsed() < RECENT);
                reg.set_recent(slot.ticket, recent);
                let owner = reg.claim(slot.ticket);
                if owner {
                    reg.progress();
                }
                owner
            };
            let now = Instant::now();
            if !owner {
                // A sleeper: no spin, no socket. A delivery from now on wakes us (our waker
                // is registered with the stream by `check`); look once more first.
                slot.spin.pause();
                if let Some(out) = check(cx) {
                    self.leave(slot, true);
                    return Poll::Ready(out);
                }
                if let Some(d) = deadline {
                    if now >= d {
                        self.leave(slot, false);
                        return Poll::Ready(Err(Error::Timeout));
                    }
                    if self.sleep_until(cx, slot, d) {
                        continue;
                    }
                }
                return Poll::Pending;
            }
            // The owner pumps: the queue first (a cache line), the socket when about to sleep
            // or every SOCKET_EVERY while spinning (a system call).
            // Acceptors never spin: a stream the peer opens is rare, a reader's data is not.
            let spin = slot.kind == Kind::Reader && slot.spin.may_spin(&self.settings, now);
            let socket_due = !spin
                || slot
                    .socket_at
                    .is_none_or(|at| now.saturating_duration_since(at) >= SOCKET_EVERY);
            if socket_due {
                slot.socket_at = Some(now);
            }
            let reads = if socket_due { PUMP_READS } else { 0 };
            let pumped = {
                let mut m = lock(&self.machine);
                let pumped = self.pump(&mut m, reads);
                std::mem::swap(&mut m.sink.wakes, &mut slot.wakes);
                pumped
            };
            for w in slot.wakes.drain(..) {
                w.wake();
            }
            let more = match pumped {
                Ok(more) => more,
                Err(reason) => {
                    self.shutdown(reason);
                    continue;
                }
            };
            if let Some(out) = check(cx) {
                self.leave(slot, true);
                return Poll::Ready(out);
            }
            if deadline.is_some_and(|d| now >= d) {
                self.leave(slot, false);
                return Poll::Ready(Err(Error::Timeout));
            }
            if more {
                // The budget ran out with bytes still on the socket: let other tasks run,
                // keep the pump, come straight back.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if spin {
                lock(&self.shm.recv).mark_working();
                if let Some(d) = deadline {
                    // Arms the timer so a deadline still ends a spin on any runtime.
                    if self.sleep_until(cx, slot, d) {
                        continue;
                    }
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Sleep as the owner: the flag goes down (the peer sends Polling on its next
            // push), and the socket read above armed the reactor with the session's waker,
            // which wakes whoever owns the pump then.
            let drained = lock(&self.shm.recv).finish_drain();
            match drained {
                Ok(Drain::Idle) => {
                    if let Some(d) = deadline {
                        if self.sleep_until(cx, slot, d) {
                            continue;
                        }
                    }
                    // A reader that comes back may take the pump from a sleeping owner.
                    self.waiters.registry().owner_sleeps(slot.ticket);
                    return Poll::Pending;
                }
                Ok(Drain::Again) => {
                    rounds += 1;
                    if rounds >= LOWER_ROUNDS {
                        // A producer faster than our look: the flag is up again, keep the
                        // pump and come back after other tasks ran.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                }
                Err(e) => {
                    self.shutdown(CloseReason::Violation(format!(
                        "receive queue corrupted: {e}"
                    )));
                }
            }
        }
    }

    /// Arms the slot's timer for `at`; `true` if `at` has already passed (look again now).
    fn sleep_until(&self, cx: &mut Context<'_>, slot: &mut WaitSlot, at: Instant) -> bool {
        let timer = slot.timer.get_or_insert_with(|| self.reactor.timer());
        timer.poll_at(cx, at).is_ready()
    }

    /// A waiter is done (`got_data`, or an error or timeout): it leaves the registry; if it
    /// owned the pump, the oldest reader still waiting takes it over. With none, in a hot mode
    /// the working flag stays up (the next read comes soon, and a server's waiting acceptor
    /// must not cost its peer a Polling frame per message; if no reader comes back, the
    /// monitor drains the session within `idle_drain_interval` and wakes the acceptor);
    /// otherwise it goes down, so the peer's next push sends a Polling frame, which wakes an
    /// acceptor through the socket.
    fn leave(&self, slot: &mut WaitSlot, got_data: bool) {
        let now = Instant::now();
        slot.spin.finish(got_data, now);
        if got_data {
            slot.last_data = Some(now);
        }
        slot.socket_at = None;
        // An owner that got its data in a hot mode will likely read again at once: the pump
        // goes now only to a reader that received lately, otherwise it waits vacant, the
        // flag up, and is handed over after a grace period if nobody claimed it.
        let lazy = got_data && self.settings.hot();
        let (owned, next, vacancy, no_reader, nobody) = {
            let mut reg = self.waiters.registry();
            let owned = reg.owns(slot.ticket);
            let (next, vacancy) = if lazy && owned {
                reg.leave_lazily(&mut slot.ticket)
            } else {
                (reg.leave(&mut slot.ticket, false), None)
            };
            (owned, next, vacancy, !reg.has_reader(None), reg.is_empty())
        };
        if let Some(w) = next {
            w.wake();
            return;
        }
        if let Some(vacancy) = vacancy {
            if !nobody {
                super::deferred::defer(self, vacancy);
            }
            return;
        }
        if owned && !(no_reader && self.settings.hot()) && !self.is_closed() {
            self.lower_flag();
            self.watch_socket_if_vacant();
        }
    }

    /// A waiter goes away unfinished (a dropped future, a closed stream): it leaves as in
    /// [`leave`](Self::leave), handing the pump over if it had it.
    pub(crate) fn forget(&self, slot: &mut WaitSlot) {
        if slot.engaged() {
            self.leave(slot, false);
        }
    }

    /// For the monitor: `None` while the session is closed, otherwise marks that move while
    /// anyone works on the session (elements ever taken from the receive queue, pumps by an
    /// owner) and whether anything waits on it.
    pub(crate) fn activity_mark(&self) -> Option<(i64, u64)> {
        if self.is_closed() {
            return None;
        }
        let progress = self.waiters.registry().progress_mark();
        Some((lock(&self.shm.recv).queue().stats().head, progress))
    }

    /// For the monitor, on a session with work waiting (a readable socket, elements in the
    /// queue, frames to send) on which nobody worked for a whole interval: takes the pump from
    /// an owner that stopped being polled (an abandoned read), takes in what the peer sent,
    /// and wakes a waiter to own the pump from now on.
    pub(crate) fn rescue(&self, reads: usize) {
        let next = {
            let mut reg = self.waiters.registry();
            if reg.is_empty() { None } else { reg.revoke() }
        };
        if next.is_some() {
            tracing::debug!(target: "shmlink::session", session = self.id, "the pump's owner stopped; handed over");
        }
        self.pump_some(reads);
        if let Some(w) = next {
            w.wake();
        }
    }

    /// The flag went down with the pump vacant: the peer's next push makes the socket
    /// readable. Under tokio and smol the reactor keeps the interest the last pump armed and
    /// wakes a successor through the session's waker; the blocking adapter has no reactor
    /// (only an owner's thread polls the socket), so a waiter is woken now to own the pump
    /// and watch the socket, acceptors included.
    pub(super) fn watch_socket_if_vacant(&self) {
        if !self.settings.blocking {
            return;
        }
        let next = {
            let mut reg = self.waiters.registry();
            if reg.owner().is_some() || reg.is_empty() {
                None
            } else {
                reg.wake_owner()
            }
        };
        if let Some(w) = next {
            w.wake();
        }
    }

    /// The hand-off thread's second look at a vacancy left by an owner that returned with
    /// its data: still vacant, it goes to a waiter now.
    pub(super) fn resolve_vacancy(&self, vacancy: u64) {
        let next = self.waiters.registry().resolve_vacancy(vacancy);
        if let Some(w) = next {
            w.wake();
        }
    }

    /// Wakes every waiter (the session closed).
    pub(super) fn wake_all_waiters(&self) {
        let mut wakes = Vec::new();
        self.waiters.registry().wake_all(&mut wakes);
        for w in wakes {
            w.wake();
        }
    }
}
