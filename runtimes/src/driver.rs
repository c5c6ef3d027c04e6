//! The session driver, written once for every runtime as poll functions over a
//! [`Reactor`](crate::rt::Reactor).
//!
//! There is no driver thread and no driver task. A task (or thread) that waits for data drains
//! the receive queue itself and reads the socket itself ("pumping"), hands what it finds for
//! other streams to their buffers and wakes only those, and returns its own data without a hop.
//! A session that nothing waits on is pumped now and then by the process-wide monitor thread
//! ([`Config::idle_drain_interval`](crate::Config), see `monitor.rs`): only one quiet for a
//! whole interval (no waiter registered, no element taken), so the hot path is the same.
//! Writers publish from their own task: allocate, write, push one element, and send a Polling
//! frame only when the peer's working flag says it is idle.
//!
//! Waiting. Every waiting task registers its waker with the session's [`Waiters`], whose own
//! waker is the one given to the reactor: when the socket becomes readable, every waiting task
//! is woken and the first to take the pump lock does the work. So no task holds a role while it
//! is not being polled, and a cancelled wait (a dropped future, a `select!` that moved on)
//! never strands the others.
//!
//! Sync modes ([`SyncMode`]). After pumping found nothing for it, a waiter either lowers the
//! receive queue's working flag and sleeps (`Event`, Go's behaviour: the peer sends a Polling
//! frame on its next push), or, in `Adaptive` and `Poll`, becomes the session's one *spinner*:
//! it keeps the flag up (so the peer sends nothing) and re-polls by waking itself, so other
//! tasks on its executor thread run between looks at the queue. Other waiters then sleep with a
//! timer on the spinner's lease: a spinner whose task stopped polling it is replaced within
//! [`SPIN_LEASE`]. A waiter leaves the flag up when it returns only if no other task waits.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use shmlink_core::buffer::{BufferError, Segment};
use shmlink_core::frame::{Frame, FrameDecoder, Message};
use shmlink_core::queue::{Drain, Element, QueueError, Wake as QueueWake};
use shmlink_core::session::{self as core_session, CloseAction, Delivery, Metrics, Piece};
use shmlink_linux::socket::Conn;

use crate::config::SyncMode;
use crate::error::CloseReason;
use crate::rt::{Reactor, Timer};
use crate::shm::Shm;
use crate::stream::StreamShared;
use crate::{Error, Exhaustion};

/// How long a spinner's claim lasts without being polled again; sleeping waiters look again
/// when it runs out.
pub(crate) const SPIN_LEASE: Duration = Duration::from_millis(5);
/// A full queue is retried this many times, 10 ms apart, under the Fallback and Error
/// policies (Go: about 100 ms).
const QUEUE_FULL_RETRIES: u32 = 10;
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);
/// Bytes requested from the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// After this many spin windows in a row that ended without data a waiter stops spinning,
/// except for a probe of [`PROBE_FACTOR`] windows every [`PROBE_EVERY`] waits.
const MAX_MISSES: u32 = 3;
const PROBE_EVERY: u32 = 16;
const PROBE_FACTOR: u32 = 4;
/// How often a spinner reads the socket.
const SOCKET_EVERY: Duration = Duration::from_micros(20);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settings the driver reads on every operation, fixed at session start.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) max_frame_len: u32,
    pub(crate) on_exhaustion: Exhaustion,
    pub(crate) write_timeout: Duration,
    pub(crate) socket_write_timeout: Duration,
    pub(crate) sync: SyncMode,
    pub(crate) spin_window: Duration,
    pub(crate) shutdown_timeout: Duration,
    /// Whether the session is driven by the blocking adapter (a close may wait in place).
    pub(crate) blocking: bool,
    /// Whether this process may run on more than one CPU: spinning against a peer that
    /// needs our only CPU would starve it.
    pub(crate) can_spin: bool,
    /// Who receives the metrics, and how often.
    pub(crate) monitor: Option<(Arc<dyn crate::Monitor>, Duration)>,
}

pub(crate) struct State {
    pub(crate) core: core_session::Session,
    pub(crate) streams: HashMap<u32, Arc<StreamShared>>,
    accept: VecDeque<Arc<StreamShared>>,
    accept_wakers: Vec<Waker>,
    pub(crate) close_reason: Option<CloseReason>,
}

/// What only the task pumping the session touches.
struct Machine {
    decoder: FrameDecoder,
    buf: Vec<u8>,
    spinner: Option<Spinner>,
    /// When the socket was last read by a spinner.
    socket_at: Instant,
    /// Spin windows that ended without data, in a row (the back-off).
    misses: u32,
    waits: u32,
}

#[derive(Clone, Copy)]
struct Spinner {
    id: u64,
    lease: Instant,
}

/// The waiters of this session, by slot (a task may wait in several slots); the reactor holds
/// a waker that wakes them all.
pub(crate) struct Waiters {
    list: Mutex<Vec<(u64, Waker)>>,
}

impl Waiters {
    fn register(&self, id: u64, waker: &Waker) {
        let mut list = lock(&self.list);
        match list.iter_mut().find(|(i, _)| *i == id) {
            Some((_, w)) if w.will_wake(waker) => {}
            Some((_, w)) => *w = waker.clone(),
            None => list.push((id, waker.clone())),
        }
    }

    fn remove(&self, id: u64) {
        let mut list = lock(&self.list);
        if let Some(i) = list.iter().position(|(i, _)| *i == id) {
            list.swap_remove(i);
        }
    }

    fn is_empty(&self) -> bool {
        lock(&self.list).is_empty()
    }

    fn wake_all(&self) {
        // Waking only schedules the tasks (or writes a thread's eventfd); nothing re-enters
        // this lock, and draining in place keeps the vector's capacity.
        for (_, w) in lock(&self.list).drain(..) {
            w.wake();
        }
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// What a push did.
pub(crate) enum Pushed {
    /// The peer is awake: nothing to send.
    Quiet,
    /// The peer was idle: send a Polling frame.
    Notify,
    /// Pushed, but the session broke (its error).
    Broken(Error),
}

/// Per-message counters, outside any lock.
#[derive(Default)]
struct Counters {
    out_flow_bytes: AtomicU64,
    send_sync_event_count: AtomicU64,
}

/// One waiter's bookkeeping (a stream's read side, or an accept).
pub(crate) struct WaitSlot {
    id: u64,
    timer: Option<Box<dyn Timer>>,
    /// The end of this wait's spin window, once it started spinning.
    spin_until: Option<Instant>,
    registered: bool,
}

impl WaitSlot {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            // SYNC: Relaxed; a unique number, ordering nothing.
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            timer: None,
            spin_until: None,
            registered: false,
        }
    }
}

impl std::fmt::Debug for WaitSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitSlot").field("id", &self.id).finish()
    }
}

pub(crate) struct Inner {
    /// Unique in this process: the `session` field of every log event about it.
    pub(crate) id: u64,
    /// This session, for handing it to the monitor thread from `&self`.
    me: Weak<Inner>,
    pub(crate) shm: Shm,
    state: Mutex<State>,
    machine: Mutex<Machine>,
    waiters: Arc<Waiters>,
    session_waker: Waker,
    /// Frame bytes the socket did not take yet; sent before anything else.
    out: Mutex<Vec<u8>>,
    reactor: Box<dyn Reactor>,
    conn: Conn,
    closed: AtomicBool,
    /// A graceful close has begun.
    closing: AtomicBool,
    epoch: Instant,
    version: u8,
    pub(crate) settings: Settings,
    counters: Counters,
}

impl Inner {
    pub(crate) fn new(
        me: Weak<Inner>,
        shm: Shm,
        conn: Conn,
        reactor: Box<dyn Reactor>,
        core: core_session::Session,
        settings: Settings,
    ) -> Self {
        let waiters = Arc::new(Waiters {
            list: Mutex::new(Vec::new()),
        });
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            // SYNC: Relaxed; only uniqueness matters.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            me,
            shm,
            version: core.version(),
            state: Mutex::new(State {
                core,
                streams: HashMap::new(),
                accept: VecDeque::new(),
                accept_wakers: Vec::new(),
                close_reason: None,
            }),
            machine: Mutex::new(Machine {
                decoder: {
                    // Room for a whole read plus a partial frame: control frames never make
                    // it allocate on the message path.
                    let mut d = FrameDecoder::with_limit(settings.max_frame_len);
                    d.reserve(READ_CHUNK + 64);
                    d
                },
                buf: vec![0; READ_CHUNK],
                spinner: None,
                socket_at: Instant::now(),
                misses: 0,
                waits: 0,
            }),
            session_waker: Waker::from(Arc::clone(&waiters)),
            waiters,
            out: Mutex::new(Vec::new()),
            reactor,
            conn,
            closed: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            epoch: Instant::now(),
            settings,
            counters: Counters::default(),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn version(&self) -> u8 {
        self.version
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The state, or the reason the session closed.
    pub(crate) fn live_state(&self) -> Result<MutexGuard<'_, State>, Error> {
        let state = lock(&self.state);
        match &state.close_reason {
            Some(reason) => Err(reason.error()),
            None => Ok(state),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        // SYNC: Acquire; pairs with the AcqRel swap in shutdown.
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn close_error(&self) -> Error {
        lock(&self.state)
            .close_reason
            .as_ref()
            .map_or(Error::ClosedLocally, CloseReason::error)
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let mut m = lock(&self.state).core.metrics();
        // SYNC: Relaxed; counters, read whenever.
        m.performance.out_flow_bytes += self.counters.out_flow_bytes.load(Ordering::Relaxed);
        m.performance.send_sync_event_count +=
            self.counters.send_sync_event_count.load(Ordering::Relaxed);
        // Go reports the queues' tails (every element ever enqueued, closes included).
        m.performance.send_queue_count = self.shm.send.queue().pushed_total().max(0) as u64;
        m.performance.receive_queue_count =
            lock(&self.shm.recv).queue().pushed_total().max(0) as u64;
        let b = &self.shm.buffers;
        m.share_memory.capacity_of_share_memory_in_bytes = u64::from(b.capacity_bytes());
        m.share_memory.all_in_used_share_memory_in_bytes = u64::from(b.in_use_bytes());
        m
    }

    pub(crate) fn count_out_flow(&self, bytes: u64) {
        // SYNC: Relaxed; a counter.
        self.counters
            .out_flow_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    // ---------------------------------------------------------------- waiting and pumping

    /// Waits until `check` yields: the heart of every read and accept.
    ///
    /// `check` looks at the waiter's own buffer and, when it returns `None`, must have
    /// registered `cx`'s waker where deliveries wake it. Cancellation-safe: dropping the
    /// caller between polls loses nothing (whatever was delivered stays in the buffers).
    /// Sends the Polling frame a push asked for.
    pub(crate) async fn send_polling(&self) -> Result<(), Error> {
        self.send_frame(&Frame::new(self.version, Message::Polling))
            .await
    }

    pub(crate) fn poll_wait<T>(
        &self,
        cx: &mut Context<'_>,
        slot: &mut WaitSlot,
        deadline: Option<Instant>,
        mut check: impl FnMut(&mut Context<'_>) -> Option<Result<T, Error>>,
    ) -> Poll<Result<T, Error>> {
        if let Some(out) = check(cx) {
            if slot.registered || slot.spin_until.is_some() {
                let mut m = lock(&self.machine);
                self.leave(&mut m, slot);
            }
            return Poll::Ready(out);
        }
        loop {
            let mut m = lock(&self.machine);
            if self.is_closed() {
                self.leave(&mut m, slot);
                drop(m);
                return Poll::Ready(check(cx).unwrap_or_else(|| Err(self.close_error())));
            }
            // Registered before looking at the socket: a readiness event after the look
            // wakes us.
            self.waiters.register(slot.id, cx.waker());
            slot.registered = true;
            let now = Instant::now();
            let spinning = m.spinner.is_some_and(|s| s.id == slot.id);
            // The queue first: it is a cache line, the socket a system call.
            if let Err(reason) = self.pump(&mut m, true, 0) {
                drop(m);
                self.shutdown(reason);
                continue;
            }
            if let Some(out) = check(cx) {
                self.leave(&mut m, slot);
                return Poll::Ready(out);
            }
            if deadline.is_some_and(|d| now >= d) {
                self.leave(&mut m, slot);
                return Poll::Ready(Err(Error::Timeout));
            }
            let other_spinner = m.spinner.filter(|s| s.id != slot.id && s.lease > now);
            let spin = other_spinner.is_none() && self.may_spin(&mut m, slot, now);
            // A spinner reads the socket only now and then (the peer sends no Polling while
            // the flag is up; only fallback data, closes or the end come that way); anyone
            // about to sleep reads it (that also arms the reactor).
            if !spin || now.saturating_duration_since(m.socket_at) >= SOCKET_EVERY {
                m.socket_at = now;
                if let Err(reason) = self.pump(&mut m, false, usize::MAX) {
                    drop(m);
                    self.shutdown(reason);
                    continue;
                }
                if let Some(out) = check(cx) {
                    self.leave(&mut m, slot);
                    return Poll::Ready(out);
                }
            }
            // Another task spins for the session: sleep, but look again when its lease ends.
            if let Some(s) = other_spinner {
                drop(m);
                let wake_at = deadline.map_or(s.lease, |d| d.min(s.lease));
                if self.sleep_until(cx, slot, wake_at) {
                    continue;
                }
                return Poll::Pending;
            }
            if spin {
                m.spinner = Some(Spinner {
                    id: slot.id,
                    lease: now + SPIN_LEASE,
                });
                if !spinning {
                    lock(&self.shm.recv).mark_working();
                    // Tasks asleep since before there was a spinner rely on a Polling frame
                    // that will not come while the flag is up: wake them to arm a timer on
                    // this spinner's lease (so a spinner whose task stops polling it, a
                    // cancelled read, cannot strand them).
                    drop(m);
                    self.waiters.wake_all();
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                drop(m);
                if let Some(d) = deadline {
                    // Arms the timer so a deadline still ends a spin on any runtime.
                    if self.sleep_until(cx, slot, d) {
                        continue;
                    }
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if m.spinner.is_some_and(|s| s.id == slot.id || s.lease <= now) {
                m.spinner = None;
            }
            let drained = lock(&self.shm.recv).finish_drain();
            match drained {
                Ok(Drain::Idle) => {
                    drop(m);
                    if let Some(d) = deadline {
                        if self.sleep_until(cx, slot, d) {
                            continue;
                        }
                    }
                    return Poll::Pending;
                }
                Ok(Drain::Again) => {}
                Err(e) => {
                    drop(m);
                    self.shutdown(CloseReason::Violation(format!(
                        "receive queue corrupted: {e}"
                    )));
                }
            }
        }
    }

    /// Takes in what the peer sent, without waiting (for `available`): a no-op while another
    /// task pumps.
    pub(crate) fn pump_now(&self) {
        self.pump_some(usize::MAX);
    }

    /// [`pump_now`](Self::pump_now) with at most `reads` socket reads (the idle drain: one
    /// session streaming at us must not hold the monitor thread; the rest waits for the next
    /// look, the socket still readable).
    pub(crate) fn pump_some(&self, reads: usize) {
        let Ok(mut m) = self.machine.try_lock() else {
            return;
        };
        if self.is_closed() {
            return;
        }
        if let Err(reason) = self.pump(&mut m, true, reads) {
            drop(m);
            self.shutdown(reason);
            return;
        }
        let hot = self.settings.sync != SyncMode::Event
            && self.settings.can_spin
            && self.waiters.is_empty();
        if !hot {
            self.lower_flag(&mut m);
        }
    }

    /// For the idle drain: `None` while the session is closed or something waits on it,
    /// otherwise how many elements have ever been taken from the receive queue (which moves
    /// while anyone pumps).
    pub(crate) fn idle_mark(&self) -> Option<i64> {
        if self.is_closed() || !self.waiters.is_empty() {
            return None;
        }
        Some(lock(&self.shm.recv).queue().stats().head)
    }

    /// The session's socket, for the idle drain's `poll(2)`.
    pub(crate) fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.conn.as_fd()
    }

    /// Whether the receive queue holds elements or frames wait to be sent: work for a pump
    /// that the socket's readiness does not show.
    pub(crate) fn has_work_waiting(&self) -> bool {
        let queued = !lock(&self.shm.recv).queue().is_empty().unwrap_or(false);
        queued || !lock(&self.out).is_empty()
    }

    /// Arms the slot's timer for `at`; `true` if `at` has already passed (look again now).
    fn sleep_until(&self, cx: &mut Context<'_>, slot: &mut WaitSlot, at: Instant) -> bool {
        let timer = slot.timer.get_or_insert_with(|| self.reactor.timer());
        timer.poll_at(cx, at).is_ready()
    }

    /// Whether this waiter should spin now (and the back-off bookkeeping).
    fn may_spin(&self, m: &mut Machine, slot: &mut WaitSlot, now: Instant) -> bool {
        let window = match self.settings.sync {
            SyncMode::Event => return false,
            _ if !self.settings.can_spin => return false,
            SyncMode::Poll => return true,
            SyncMode::Adaptive => self.settings.spin_window,
        };
        let until = *slot.spin_until.get_or_insert_with(|| {
            m.waits = m.waits.wrapping_add(1);
            // After a few windows without an answer, stop spinning but probe now and then
            // with a longer window: long enough to cover a sleeping peer's wake-up, so that
            // once one side spins again the other side's probes hit too.
            let window = match (m.misses >= MAX_MISSES, m.waits % PROBE_EVERY == 0) {
                (false, _) => window,
                (true, true) => window * PROBE_FACTOR,
                (true, false) => Duration::ZERO,
            };
            now + window
        });
        if now < until {
            return true;
        }
        if m.spinner.is_some_and(|s| s.id == slot.id) {
            // One miss per wait: the spin ends here.
            m.spinner = None;
            m.misses = (m.misses + 1).min(MAX_MISSES);
        }
        false
    }

    /// A waiter is done (data, error or timeout): give up the spin, and leave the working flag
    /// up only if nobody else waits (a hot session pays no wake-up on the next message).
    fn leave(&self, m: &mut Machine, slot: &mut WaitSlot) {
        if slot.registered {
            self.waiters.remove(slot.id);
            slot.registered = false;
        }
        let was_spinning = m.spinner.is_some_and(|s| s.id == slot.id);
        if was_spinning {
            m.spinner = None;
            if slot.spin_until.is_some_and(|u| Instant::now() <= u) {
                m.misses = 0;
            }
        }
        slot.spin_until = None;
        let hot = self.settings.sync != SyncMode::Event
            && self.settings.can_spin
            && m.spinner.is_none()
            && self.waiters.is_empty();
        if !hot && !self.is_closed() {
            self.lower_flag(m);
        }
    }

    /// Lowers the receive queue's working flag, draining what arrived meanwhile.
    fn lower_flag(&self, m: &mut Machine) {
        match m.spinner {
            // A live spinner owns the flag.
            Some(s) if s.lease > Instant::now() => return,
            // One whose task stopped polling it (a cancelled read) owns nothing.
            Some(_) => m.spinner = None,
            None => {}
        }
        loop {
            let drained = lock(&self.shm.recv).finish_drain();
            match drained {
                Ok(Drain::Idle) => return,
                Ok(Drain::Again) => {
                    if let Err(reason) = self.drain_queue() {
                        self.shutdown(reason);
                        return;
                    }
                }
                Err(e) => {
                    self.shutdown(CloseReason::Violation(format!(
                        "receive queue corrupted: {e}"
                    )));
                    return;
                }
            }
        }
    }

    /// A waiter goes away for good (its stream closed): give up its spin.
    pub(crate) fn forget(&self, slot: &mut WaitSlot) {
        if !slot.registered && slot.spin_until.is_none() {
            return;
        }
        let mut m = lock(&self.machine);
        if slot.registered {
            self.waiters.remove(slot.id);
            slot.registered = false;
        }
        slot.spin_until = None;
        if m.spinner.is_some_and(|s| s.id == slot.id) {
            m.spinner = None;
            if !self.is_closed() {
                self.lower_flag(&mut m);
            }
            drop(m);
            // Someone else may want to take over.
            self.waiters.wake_all();
        }
    }

    /// Drains the receive queue (if `queue`) and reads the socket until it has nothing more
    /// or `reads` reads were made (none: the socket is not looked at). An error ends the
    /// session (counted in Go's `event_conn_error_count` unless the peer just left).
    fn pump(&self, m: &mut Machine, queue: bool, reads: usize) -> Result<(), CloseReason> {
        let result = if queue { self.drain_queue() } else { Ok(()) }.and_then(|()| {
            if reads > 0 {
                self.pump_socket(m, reads)
            } else {
                Ok(())
            }
        });
        if let Err(reason) = &result {
            if !matches!(reason, CloseReason::Peer) {
                lock(&self.state)
                    .core
                    .metrics_mut()
                    .stability
                    .event_conn_error_count += 1;
            }
        }
        result
    }

    fn pump_socket(&self, m: &mut Machine, reads: usize) -> Result<(), CloseReason> {
        self.flush_out_now();
        let mut cx = Context::from_waker(&self.session_waker);
        for _ in 0..reads {
            match self.reactor.poll_recv(&mut cx, &mut m.buf) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) => {
                    // Whatever the peer pushed before it closed is delivered first.
                    self.drain_queue()?;
                    let cut = m.decoder.pending();
                    if cut > 0 {
                        return Err(CloseReason::Violation(format!(
                            "the peer closed the connection in the middle of a frame \
                             ({cut} bytes of it received)"
                        )));
                    }
                    return Err(CloseReason::Peer);
                }
                Poll::Ready(Ok(n)) => {
                    m.decoder.extend(&m.buf[..n]);
                    loop {
                        let frame = match m.decoder.next_frame() {
                            Ok(Some(frame)) => frame,
                            Ok(None) => break,
                            Err(e) => {
                                return Err(CloseReason::Violation(format!("bad frame: {e}")));
                            }
                        };
                        self.handle_frame(&frame)?;
                    }
                }
                Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Poll::Ready(Err(e)) => {
                    return Err(match e.kind() {
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                            CloseReason::Peer
                        }
                        _ => CloseReason::Lost(format!("socket read failed: {e}")),
                    });
                }
            }
        }
        Ok(())
    }

    /// Handles one control frame from the peer.
    fn handle_frame(&self, frame: &Frame<'_>) -> Result<(), CloseReason> {
        // The peer pushed everything it queued before it wrote this frame (a StreamClose
        // sent because the queue was full, fallback data, ...): while our flag is up it sends
        // no Polling, so drain first, or the frame would overtake those elements.
        if !matches!(frame.message, Message::Polling) {
            self.drain_queue()?;
        }
        let now = self.now_ms();
        self.with_core(|core, mut sink| core.on_frame(frame, now, &mut sink))
            .map_err(|e| CloseReason::Violation(e.to_string()))?;
        if let Message::Polling = frame.message {
            self.drain_queue()?;
        }
        Ok(())
    }

    /// Pops every element of the receive queue and routes it (one state lock per batch).
    fn drain_queue(&self) -> Result<(), CloseReason> {
        let corrupt =
            |e: QueueError| CloseReason::Violation(format!("receive queue corrupted: {e}"));
        let mut consumer = lock(&self.shm.recv);
        let Some(first) = consumer.pop().map_err(corrupt)? else {
            return Ok(());
        };
        self.with_core(|core, mut sink| {
            core.on_element(first, &self.shm.buffers, &mut sink)
                .map_err(|e| CloseReason::Violation(e.to_string()))?;
            while let Some(element) = consumer.pop().map_err(corrupt)? {
                core.on_element(element, &self.shm.buffers, &mut sink)
                    .map_err(|e| CloseReason::Violation(e.to_string()))?;
            }
            Ok(())
        })
    }

    /// Runs `f` on the core session with a sink that routes deliveries to streams.
    fn with_core<R>(
        &self,
        f: impl FnOnce(&mut core_session::Session, &mut dyn FnMut(Delivery<'_>)) -> R,
    ) -> R {
        let mut state = lock(&self.state);
        let State {
            core,
            streams,
            accept,
            accept_wakers,
            ..
        } = &mut *state;
        let mut opened = false;
        let result = f(core, &mut |d| opened |= self.deliver(streams, accept, d));
        if opened {
            for w in accept_wakers.drain(..) {
                w.wake();
            }
        }
        result
    }

    /// Routes one delivery; returns whether a stream was opened (to wake acceptors).
    fn deliver(
        &self,
        streams: &mut HashMap<u32, Arc<StreamShared>>,
        accept: &mut VecDeque<Arc<StreamShared>>,
        delivery: Delivery<'_>,
    ) -> bool {
        match delivery {
            Delivery::Opened(id) => {
                let shared = Arc::new(StreamShared::new(id));
                streams.insert(id, Arc::clone(&shared));
                accept.push_back(shared);
                tracing::debug!(target: "shmlink::stream", session = self.id, stream = id, "stream opened by the peer");
                return true;
            }
            Delivery::Shm { stream_id, segment } => {
                let rejected = match streams.get(&stream_id) {
                    Some(s) => s.push(Piece::Shm(segment)),
                    None => Some(Piece::Shm(segment)),
                };
                if let Some(Piece::Shm(segment)) = rejected {
                    self.recycle(segment);
                }
            }
            // An empty fallback frame carries no data; queuing it would read as a false end.
            Delivery::Fallback { data: [], .. } => {}
            Delivery::Fallback { stream_id, data } => {
                if let Some(s) = streams.get(&stream_id) {
                    let _ = s.push(Piece::Heap(data.to_vec()));
                }
            }
            Delivery::Closed(id) => {
                if let Some(s) = streams.get(&id) {
                    tracing::debug!(target: "shmlink::stream", session = self.id, stream = id, "stream closed by the peer");
                    s.peer_closed();
                }
            }
            Delivery::Recycle(slice) => {
                let _ = self.shm.buffers.recycle(slice);
            }
            Delivery::HotRestart { .. } => {}
        }
        false
    }

    pub(crate) fn recycle(&self, segment: Segment) {
        // A failure means the slice was already free: a peer bug we must not amplify.
        let _ = self.shm.buffers.recycle(segment.slice);
    }

    // ---------------------------------------------------------------- streams and accept

    pub(crate) fn open_stream(&self) -> Result<Arc<StreamShared>, Error> {
        if self.is_closing() {
            return Err(Error::ClosedLocally);
        }
        let mut state = self.live_state()?;
        let now = self.now_ms();
        let id = state.core.open_stream(now).map_err(Error::from)?;
        let shared = Arc::new(StreamShared::new(id));
        state.streams.insert(id, Arc::clone(&shared));
        tracing::debug!(target: "shmlink::stream", session = self.id, stream = id, "stream opened");
        Ok(shared)
    }

    /// Waits for a stream the peer opens.
    pub(crate) fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        slot: &mut WaitSlot,
        deadline: Option<Instant>,
    ) -> Poll<Result<Arc<StreamShared>, Error>> {
        self.poll_wait(cx, slot, deadline, |cx| {
            let mut state = lock(&self.state);
            if let Some(shared) = state.accept.pop_front() {
                return Some(Ok(shared));
            }
            if let Some(reason) = &state.close_reason {
                return Some(Err(reason.error()));
            }
            if !state.accept_wakers.iter().any(|w| w.will_wake(cx.waker())) {
                state.accept_wakers.push(cx.waker().clone());
            }
            None
        })
    }

    /// Closes stream `id` on the wire if the protocol requires it. Never waits: a close that
    /// the socket cannot take now stays queued for the next send or pump.
    pub(crate) fn close_stream(&self, id: u32) {
        let action = {
            let mut state = lock(&self.state);
            state.streams.remove(&id);
            if state.close_reason.is_some() {
                return;
            }
            tracing::debug!(target: "shmlink::stream", session = self.id, stream = id, "stream closed");
            state.core.close_stream(id)
        };
        if let CloseAction::SendClose(element) = action {
            match self.shm.send.push(element) {
                Ok(QueueWake::NotifyPeer) => {
                    self.note_polling();
                    let _ = self.queue_frame(&Frame::new(self.version, Message::Polling));
                }
                Ok(QueueWake::PeerAwake) => {}
                Err(QueueError::Full { .. }) => {
                    let close = Frame::new(self.version, Message::StreamClose { stream_id: id });
                    let _ = self.queue_frame(&close);
                }
                Err(e) => {
                    self.shutdown(CloseReason::Violation(format!("send queue corrupted: {e}")))
                }
            }
        }
    }

    fn note_polling(&self) {
        // SYNC: Relaxed; a counter.
        self.counters
            .send_sync_event_count
            .fetch_add(1, Ordering::Relaxed);
    }

    // ---------------------------------------------------------------- sending

    /// Pushes `element`, waiting for queue room as the policy says. Returns whether the peer
    /// must be woken (the caller sends the Polling frame, once its slices are the peer's).
    ///
    /// An error means the element was not pushed; dropping the future before it completes
    /// means the same. `Pushed::Broken`: pushed, but the session cannot go on (the element's
    /// slices may be the peer's: do not recycle them).
    pub(crate) async fn push_element(
        &self,
        element: Element,
        deadline: Option<Instant>,
    ) -> Result<Pushed, Error> {
        let mut attempt = 0;
        let mut timer: Option<Box<dyn Timer>> = None;
        loop {
            if self.is_closed() {
                return Err(self.close_error());
            }
            match self.shm.send.push(element) {
                Ok(QueueWake::NotifyPeer) => {
                    self.note_polling();
                    return Ok(Pushed::Notify);
                }
                Ok(QueueWake::PeerAwake) => return Ok(Pushed::Quiet),
                Err(QueueError::Full { .. }) => {
                    attempt += 1;
                    let more = match deadline {
                        Some(d) => Instant::now() < d,
                        None => attempt <= QUEUE_FULL_RETRIES,
                    };
                    if !more {
                        lock(&self.state)
                            .core
                            .metrics_mut()
                            .stability
                            .queue_full_error_count += 1;
                        return Err(if deadline.is_some() {
                            Error::Timeout
                        } else {
                            Error::QueueFull
                        });
                    }
                    // Under Wait, look often: room comes back as soon as the peer pops.
                    let pause = if deadline.is_some() {
                        Duration::from_micros(200)
                    } else {
                        QUEUE_FULL_WAIT
                    };
                    self.pause(&mut timer, pause).await;
                }
                // Pushed: the element (and its slices) are the peer's, even though the
                // session cannot go on.
                Err(e @ QueueError::FlagCorruptedAfterPush { .. }) => {
                    let reason = CloseReason::Violation(format!("send queue corrupted: {e}"));
                    let error = reason.error();
                    self.shutdown(reason);
                    return Ok(Pushed::Broken(error));
                }
                Err(e) => {
                    let reason = CloseReason::Violation(format!("send queue corrupted: {e}"));
                    let error = reason.error();
                    self.shutdown(reason);
                    return Err(error);
                }
            }
        }
    }

    #[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
    /// One push without waiting: `Ok(false)` when the queue is full (nothing pushed). A
    /// needed Polling frame is queued (the out buffer keeps what the socket does not take).
    pub(crate) fn try_push(&self, element: Element) -> Result<bool, Error> {
        if self.is_closed() {
            return Err(self.close_error());
        }
        match self.shm.send.push(element) {
            Ok(QueueWake::NotifyPeer) => {
                self.note_polling();
                self.queue_frame(&Frame::new(self.version, Message::Polling))?;
                Ok(true)
            }
            Ok(QueueWake::PeerAwake) => Ok(true),
            Err(QueueError::Full { .. }) => Ok(false),
            Err(e) => {
                // Pushed or not, the session cannot go on; a slice that may be the peer's is
                // not recycled by the caller (take_back refuses a handed-over slice only if
                // the peer took it).
                Err(self.fail_send(CloseReason::Violation(format!("send queue corrupted: {e}"))))
            }
        }
    }

    #[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
    /// Waits until the out buffer is on the wire (`poll_flush`), bounded by the connection
    /// write timeout from `since`.
    pub(crate) fn poll_flushed(
        &self,
        cx: &mut Context<'_>,
        timer: &mut Option<Box<dyn Timer>>,
        since: Instant,
    ) -> Poll<Result<(), Error>> {
        let mut out = lock(&self.out);
        match self.flush_out(&mut out) {
            Ok(true) => return Poll::Ready(Ok(())),
            Ok(false) => {}
            Err(e) => {
                drop(out);
                return Poll::Ready(Err(self.fail_send_io(e)));
            }
        }
        drop(out);
        let now = Instant::now();
        if now >= since + self.settings.socket_write_timeout {
            return Poll::Ready(Err(self.fail_send(CloseReason::Lost(format!(
                "the socket took no bytes for {:?}",
                self.settings.socket_write_timeout
            )))));
        }
        let timer = timer.get_or_insert_with(|| self.reactor.timer());
        match timer.poll_at(cx, now + Duration::from_micros(200)) {
            Poll::Ready(()) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }

    #[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
    /// A timer on this session's runtime.
    pub(crate) fn timer(&self) -> Box<dyn Timer> {
        self.reactor.timer()
    }

    /// Sleeps for `pause` on the session's runtime (a back-off while memory or the queue
    /// is full).
    pub(crate) async fn pause(&self, timer: &mut Option<Box<dyn Timer>>, pause: Duration) {
        let at = Instant::now() + pause;
        let timer = timer.get_or_insert_with(|| self.reactor.timer());
        crate::rt::poll_fn(|cx| timer.poll_at(cx, at)).await;
    }

    /// Sends one frame, waiting (bounded by the connection write timeout) until the socket
    /// took it. FallbackData goes out as its prefix plus the payload where it already is.
    pub(crate) async fn send_frame(&self, frame: &Frame<'_>) -> Result<(), Error> {
        if self.queue_frame(frame)? {
            return Ok(());
        }
        self.wait_flushed().await
    }

    /// Waits until the out buffer is on the wire (bounded by the connection write timeout).
    pub(crate) async fn wait_flushed(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.settings.socket_write_timeout;
        let mut timer = None;
        let mut pause = Duration::from_micros(20);
        loop {
            self.pause(&mut timer, pause).await;
            pause = (pause * 2).min(Duration::from_millis(1));
            let mut out = lock(&self.out);
            match self.flush_out(&mut out) {
                Ok(true) => return Ok(()),
                Ok(false) if Instant::now() < deadline => {}
                Ok(false) => {
                    drop(out);
                    return Err(self.fail_send(CloseReason::Lost(format!(
                        "the socket took no bytes for {:?}",
                        self.settings.socket_write_timeout
                    ))));
                }
                Err(e) => {
                    drop(out);
                    return Err(self.fail_send_io(e));
                }
            }
        }
    }

    /// Puts a frame on the socket or, what it does not take, in the out buffer. `Ok(true)`:
    /// everything pending is on the wire.
    pub(crate) fn queue_frame(&self, frame: &Frame<'_>) -> Result<bool, Error> {
        let mut small = [0u8; 16];
        let (head, body): (&[u8], &[u8]) = match frame.message {
            Message::FallbackData { data, .. } => {
                let (prefix, n) = frame
                    .prefix()
                    .map_err(shmlink_linux::socket::TransportError::from)?;
                small[..n].copy_from_slice(&prefix[..n]);
                (&small[..n], data)
            }
            _ => {
                let n = frame
                    .encode(&mut small)
                    .map_err(shmlink_linux::socket::TransportError::from)?;
                (&small[..n], &[])
            }
        };
        let mut out = lock(&self.out);
        let result = (|| {
            if !self.flush_out(&mut out)? {
                out.extend_from_slice(head);
                out.extend_from_slice(body);
                return Ok(false);
            }
            let sent = self.send_now(&[head, body])?;
            let total = head.len() + body.len();
            if sent < total {
                if sent < head.len() {
                    out.extend_from_slice(&head[sent..]);
                    out.extend_from_slice(body);
                } else {
                    out.extend_from_slice(&body[sent - head.len()..]);
                }
                return Ok(false);
            }
            Ok(true)
        })();
        drop(out);
        result.map_err(|e| self.fail_send_io(e))
    }

    /// Sends what the out buffer holds; `Ok(true)` when it is empty.
    fn flush_out(&self, out: &mut Vec<u8>) -> std::io::Result<bool> {
        while !out.is_empty() {
            let n = self.send_now(&[out])?;
            if n == 0 {
                return Ok(false);
            }
            out.drain(..n);
        }
        Ok(true)
    }

    /// Best effort, for the pump: a frame left over by a close that could not wait.
    fn flush_out_now(&self) {
        let Ok(mut out) = self.out.try_lock() else {
            return;
        };
        if !out.is_empty() {
            if let Err(e) = self.flush_out(&mut out) {
                drop(out);
                let _ = self.fail_send_io(e);
            }
        }
    }

    /// One non-blocking vectored send; 0 when the socket is full.
    fn send_now(&self, parts: &[&[u8]]) -> std::io::Result<usize> {
        use rustix::net::{SendAncillaryBuffer, SendFlags};
        let slices: [std::io::IoSlice<'_>; 2] = [
            std::io::IoSlice::new(parts[0]),
            std::io::IoSlice::new(parts.get(1).copied().unwrap_or(&[])),
        ];
        loop {
            match rustix::net::sendmsg(
                &self.conn,
                &slices[..parts.len().min(2)],
                &mut SendAncillaryBuffer::default(),
                SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
            ) {
                Ok(n) => return Ok(n),
                Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::AGAIN) => return Ok(0),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn fail_send_io(&self, e: std::io::Error) -> Error {
        let reason = match e.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                CloseReason::Peer
            }
            _ => CloseReason::Lost(format!("socket write failed: {e}")),
        };
        self.fail_send(reason)
    }

    /// How far the peer has got with what we sent it: whether anything waits for it (in our
    /// send queue or in the socket's out buffer) and how many elements it has taken so far.
    pub(crate) fn peer_progress(&self) -> (bool, i64, usize) {
        let queue = self.shm.send.queue();
        let queued = !queue.is_empty().unwrap_or(true);
        let out = lock(&self.out).len();
        (queued || out > 0, queue.stats().head, out)
    }

    /// Closes the session because the peer has taken nothing for `silent`.
    pub(crate) fn stalled(&self, silent: Duration) {
        self.shutdown(CloseReason::Lost(format!(
            "the peer took nothing we sent for {silent:?} (peer_stall_timeout): \
             it is alive but not reading"
        )));
    }

    /// Shared memory the peer corrupted (a free list that hands out a slice we hold, a bad
    /// list header): the session closes naming it, and the caller gets the same error.
    pub(crate) fn fail_buffers(&self, e: BufferError) -> Error {
        self.fail_send(CloseReason::Violation(e.to_string()))
    }

    fn fail_send(&self, reason: CloseReason) -> Error {
        self.shutdown(reason);
        // The first reason recorded wins: a writer whose socket write failed because the
        // session was just closed for another reason (a stalled peer, a violation) reports
        // that reason, not the broken pipe it caused.
        self.close_error()
    }

    /// Whether the peer has taken everything we queued for it (our send queue is empty and
    /// no frame waits in the out buffer).
    fn peer_took_everything(&self) -> bool {
        self.shm.send.queue().is_empty().unwrap_or(true) && lock(&self.out).is_empty()
    }

    /// Closes the session gracefully: no new streams, then, once the peer has taken what is
    /// queued for it (or `shutdown_timeout` has passed), the socket closes. A blocking session
    /// waits in place; an async one hands the wait to a short-lived thread, so that no
    /// executor thread blocks (`AsyncSession::shutdown` waits asynchronously instead).
    pub(crate) fn close_gracefully(self: &Arc<Self>) {
        if self.is_closed() {
            return;
        }
        // SYNC: Release; pairs with the Acquire load in is_closing.
        self.closing.store(true, Ordering::Release);
        let _ = self.flush_out_now_checked();
        if self.peer_took_everything() {
            self.shutdown(CloseReason::Local);
            return;
        }
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        if self.settings.blocking {
            self.wait_drained(deadline);
            self.shutdown(CloseReason::Local);
            return;
        }
        let inner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("shmlink-close".into())
            .spawn(move || {
                inner.wait_drained(deadline);
                inner.shutdown(CloseReason::Local);
            });
        if spawned.is_err() {
            self.shutdown(CloseReason::Local);
        }
    }

    /// Waits (sleeping briefly between looks) until the peer took everything or `deadline`.
    fn wait_drained(&self, deadline: Instant) {
        let mut pause = Duration::from_micros(50);
        while !self.is_closed() && Instant::now() < deadline {
            let _ = self.flush_out_now_checked();
            if self.peer_took_everything() {
                return;
            }
            // Notices a peer that is gone (no reason to wait for it then).
            self.pump_now();
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Async twin of the wait in [`close_gracefully`](Self::close_gracefully).
    #[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
    pub(crate) async fn shutdown_async(&self) {
        if self.is_closed() {
            return;
        }
        // SYNC: Release; pairs with the Acquire load in is_closing.
        self.closing.store(true, Ordering::Release);
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        let mut timer = None;
        let mut pause = Duration::from_micros(50);
        while !self.is_closed() && Instant::now() < deadline {
            let _ = self.flush_out_now_checked();
            if self.peer_took_everything() {
                break;
            }
            self.pump_now();
            self.pause(&mut timer, pause).await;
            pause = (pause * 2).min(Duration::from_millis(5));
        }
        self.shutdown(CloseReason::Local);
    }

    /// Refuses new local streams from now on (the first step of a graceful close).
    pub(crate) fn begin_closing(&self) {
        // SYNC: Release; pairs with the Acquire load in is_closing.
        self.closing.store(true, Ordering::Release);
    }

    /// Streams handed out (opened here or accepted) and not closed yet; streams the peer
    /// opened that nobody accepted do not count. Takes in what the peer sent first.
    pub(crate) fn streams_in_use(&self) -> usize {
        self.pump_now();
        let state = lock(&self.state);
        state.streams.len().saturating_sub(state.accept.len())
    }

    /// Whether a graceful close has begun (no new streams).
    pub(crate) fn is_closing(&self) -> bool {
        // SYNC: Acquire; pairs with the Release stores in close_gracefully / shutdown_async.
        self.closing.load(Ordering::Acquire)
    }

    fn flush_out_now_checked(&self) -> bool {
        self.flush_out_now();
        !self.is_closed()
    }

    /// Marks the session closed, wakes everyone, and shuts the socket down.
    pub(crate) fn shutdown(&self, reason: CloseReason) {
        // SYNC: AcqRel; the swap makes shutdown run once; pairs with the Acquire loads in is_closed.
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (streams, acceptors) = {
            let mut state = lock(&self.state);
            state.close_reason = Some(reason.clone());
            state.core.clear();
            state.accept.clear();
            let acceptors = std::mem::take(&mut state.accept_wakers);
            (
                state.streams.drain().map(|(_, s)| s).collect::<Vec<_>>(),
                acceptors,
            )
        };
        for stream in streams {
            stream.session_closed(&reason);
        }
        for w in acceptors {
            w.wake();
        }
        self.waiters.wake_all();
        self.conn.shutdown();
        match &reason {
            CloseReason::Local | CloseReason::Peer => {
                tracing::info!(target: "shmlink::session", session = self.id, reason = %reason.error(), "session closed");
            }
            _ => {
                tracing::warn!(target: "shmlink::session", session = self.id, reason = %reason.error(), "session closed");
            }
        }
        if self.settings.monitor.is_some() {
            if let Some(me) = self.me.upgrade() {
                crate::monitor::closed(me);
            }
        }
    }

    /// Whether the circuit breaker is closed (no fallback within `circuit_breaker`).
    pub(crate) fn is_healthy(&self) -> bool {
        lock(&self.state).core.is_healthy(self.now_ms())
    }

    /// Whether this process is the session's client.
    pub(crate) fn is_client(&self) -> bool {
        lock(&self.state).core.side() == shmlink_core::queue::Side::Client
    }
}
