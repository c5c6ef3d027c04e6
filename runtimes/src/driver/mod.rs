//! The session driver, written once for every runtime as poll functions over a
//! [`Reactor`](crate::rt::Reactor). There is no driver thread and no driver task.
//!
//! - `waiting.rs`: the waiters of a session and the one among them that owns the pump (drains
//!   the receive queue, reads the socket, or spins). The others sleep on their own wakers and
//!   are woken only for their own data or to take the pump over; leaving hands it over.
//! - `pump.rs`: what the owner does: take everything the queue holds, read the socket within a
//!   budget, route deliveries to streams (one lock per stream touched), and call the wakers
//!   collected once every lock is released.
//! - `spin.rs`: whether a waiter spins (`Adaptive`, `Poll`), decided per waiter, with at most
//!   (CPUs available - 1) spinning threads in the process.
//! - `deferred.rs`: the pump left vacant by a reader that returned with its data (it will
//!   likely read again at once) is handed to a waiter after a grace period if nobody claimed
//!   it, by one process-wide thread.
//! - `publish.rs`: pushing elements and writing frames from the writer's own task.
//!
//! A session that nothing waits on, or whose owner stopped being polled (an abandoned read),
//! is pumped now and then by the process-wide monitor thread
//! ([`Config::idle_drain_interval`](crate::Config), see `monitor.rs`), which then hands the
//! pump to a waiter that is still there.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use shmlink_core::buffer::{BufferError, Segment};
use shmlink_core::frame::{Frame, Message};
use shmlink_core::queue::{QueueError, Wake as QueueWake};
use shmlink_core::session::{self as core_session, CloseAction, Metrics};
use shmlink_linux::socket::Conn;

use crate::config::SyncMode;
use crate::error::CloseReason;
use crate::rt::Reactor;
use crate::shm::Shm;
use crate::stream::StreamShared;
use crate::{Error, Exhaustion};

mod deferred;
mod publish;
mod pump;
mod spin;
mod waiting;

pub(crate) use publish::Pushed;
pub(crate) use waiting::WaitSlot;
use waiting::Waiters;

/// Bytes requested from the socket per read.
const READ_CHUNK: usize = 64 * 1024;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A hasher for stream ids (small sequential integers chosen by the two ends): one multiply,
/// where SipHash costs a few dozen instructions per delivery. A peer choosing ids to collide
/// only slows its own session's map.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(crate) type StreamMap = HashMap<u32, Arc<StreamShared>, BuildHasherDefault<IdHasher>>;

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

impl Settings {
    /// Whether a waiter that leaves keeps the working flag up when nobody takes the pump
    /// over (the next read comes soon; the monitor drains the session if it does not).
    fn hot(&self) -> bool {
        self.sync != SyncMode::Event && self.can_spin
    }
}

pub(crate) struct State {
    pub(crate) core: core_session::Session,
    pub(crate) streams: StreamMap,
    accept: VecDeque<Arc<StreamShared>>,
    pub(crate) close_reason: Option<CloseReason>,
}

/// Per-message counters, outside any lock.
#[derive(Default)]
struct Counters {
    out_flow_bytes: AtomicU64,
    send_sync_event_count: AtomicU64,
    /// Recycles the buffer manager refused (a slice already free): a peer bug or ours.
    refused_recycles: AtomicU64,
}

pub(crate) struct Inner {
    /// Unique in this process: the `session` field of every log event about it.
    pub(crate) id: u64,
    /// This session, for handing it to the monitor thread from `&self`.
    me: Weak<Inner>,
    pub(crate) shm: Shm,
    state: Mutex<State>,
    machine: Mutex<pump::Machine>,
    waiters: Arc<Waiters>,
    /// Wakes the pump's owner (or, with the pump vacant, a successor): the waker the reactor
    /// holds for the socket.
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
    /// Who the peer is: its credentials at connect time (unix socket) or its address (TCP).
    pub(crate) peer: shmlink_linux::socket::Peer,
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
        let waiters = Arc::new(Waiters::default());
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            // SYNC: Relaxed; only uniqueness matters.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            me,
            shm,
            peer: conn.peer(),
            version: core.version(),
            state: Mutex::new(State {
                core,
                streams: StreamMap::default(),
                accept: VecDeque::new(),
                close_reason: None,
            }),
            machine: Mutex::new(pump::Machine::new(settings.max_frame_len)),
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
        m.stability.refused_recycle_count += self.refused_recycles();
        // Go reports the queues' tails (every element ever enqueued, closes included).
        m.performance.send_queue_count = self.shm.send.queue().pushed_total().max(0) as u64;
        m.performance.receive_queue_count =
            lock(&self.shm.recv).queue().pushed_total().max(0) as u64;
        let b = &self.shm.buffers;
        m.share_memory.capacity_of_share_memory_in_bytes = u64::from(b.capacity_bytes());
        m.share_memory.all_in_used_share_memory_in_bytes = u64::from(b.in_use_bytes());
        m
    }

    /// Recycles the buffer manager refused since the session started (a slice that was
    /// already free: recycled twice by us, or named twice by the peer). Zero in a healthy
    /// session; the integration tests assert it.
    pub(crate) fn refused_recycles(&self) -> u64 {
        // SYNC: Relaxed; a counter.
        self.counters.refused_recycles.load(Ordering::Relaxed)
    }

    pub(crate) fn count_out_flow(&self, bytes: u64) {
        // SYNC: Relaxed; a counter.
        self.counters
            .out_flow_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn recycle(&self, segment: Segment) {
        self.recycle_slice(segment.slice);
    }

    /// Gives a slice back to its free list. A refusal means it was already free: a bug we
    /// must not amplify, counted (see [`refused_recycles`](Self::refused_recycles)).
    pub(crate) fn recycle_slice(&self, slice: u32) {
        if let Err(e) = self.shm.buffers.recycle(slice) {
            // SYNC: Relaxed; a counter.
            self.counters
                .refused_recycles
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: "shmlink::session", session = self.id, error = %e, "recycle refused");
        }
    }
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
        self.poll_wait(cx, slot, deadline, |_| {
            let mut state = lock(&self.state);
            if let Some(shared) = state.accept.pop_front() {
                return Some(Ok(shared));
            }
            if let Some(reason) = &state.close_reason {
                return Some(Err(reason.error()));
            }
            // The waker is in the session's registry (an acceptor's slot), which every
            // stream the peer opens wakes; a cancelled accept leaves it.
            None
        })
    }

    /// Closes stream `id` on the wire if the protocol requires it. Never waits: a close that
    /// the socket cannot take now stays queued for the next send or pump.
    ///
    /// A stream that sent anything over the socket (`via_socket`: it fell back) is closed with
    /// a StreamClose frame behind that data, never with a queue element: the peer drains its
    /// queue before it reads the socket, so a close element would overtake the last message.
    pub(crate) fn close_stream(&self, id: u32, via_socket: bool) {
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
            if via_socket || !lock(&self.out).is_empty() {
                let close = Frame::new(self.version, Message::StreamClose { stream_id: id });
                let _ = self.queue_frame(&close);
                return;
            }
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
        let streams = {
            let mut state = lock(&self.state);
            state.close_reason = Some(reason.clone());
            state.core.clear();
            state.accept.clear();
            state.streams.drain().map(|(_, s)| s).collect::<Vec<_>>()
        };
        for stream in streams {
            if let Some(w) = stream.session_closed(&reason) {
                w.wake();
            }
        }
        self.wake_all_waiters();
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

    /// How long the circuit breaker still refuses new streams (zero: it is closed).
    pub(crate) fn unhealthy_for(&self) -> Duration {
        Duration::from_millis(lock(&self.state).core.unhealthy_for_ms(self.now_ms()))
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
