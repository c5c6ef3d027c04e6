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