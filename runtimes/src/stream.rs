//! Streams: ordered byte streams multiplexed over a session (PROTOCOL.md 5), with the parts
//! the blocking [`Stream`] and the async [`AsyncStream`](crate::AsyncStream) share.
//!
//! Writing: `reserve` hands out shared memory to write into directly (zero copy); `commit`
//! publishes it with one queue element. When shared memory runs out, the
//! [`Exhaustion`](crate::Exhaustion) policy decides: wait for the peer to give memory back,
//! fail, or send the bytes in a FallbackData frame (the stream then stays on the socket, so
//! bytes never overtake each other).
//!
//! Reading: `read_view` returns the next received piece as a zero-copy [`View`] into shared
//! memory; `read_bytes`/`peek`/`read_buf` give `bytes` types for framed protocols; `Read` and
//! `AsyncRead` copy. Message boundaries are not preserved (a stream is a byte stream, like
//! TCP); frame your messages, for example with a length prefix.

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};

use shmlink_core::buffer::{BufferError, Segment};
use shmlink_core::frame::{Frame, Message};
use shmlink_core::queue::Element;
use shmlink_core::session::{Piece, ReceiveBuffer};

use crate::driver::{Inner, Pushed, WaitSlot};
use crate::error::CloseReason;
use crate::rt::{Timer, block_on, poll_fn};
use crate::{Error, Exhaustion};

#[derive(Default)]
struct RecvState {
    buffer: ReceiveBuffer,
    peer_closed: bool,
    session_closed: Option<CloseReason>,
    local_closed: bool,
    /// The task waiting to read, woken by deliveries.
    reader: Option<Waker>,
}

impl RecvState {
    /// The reader's waker, to call once the lock is released.
    fn take_waker(&mut self) -> Option<Waker> {
        self.reader.take()
    }
}

/// Bits of [`StreamShared::status`]: what a writer must know without a lock.
const FALLBACK: u8 = 1;
const PEER_CLOSED: u8 = 2;
/// How long a reservation waits for shared memory under [`Exhaustion::Fallback`] before the
/// stream falls back to the socket (for good: bytes never overtake each other). Measured:
/// with 2 ms, 200,000 pipelined 64 B messages fell back after a reader descheduled for a few
/// milliseconds on a 2-CPU machine; a burst should outlast the scheduler's time slice.
const FALLBACK_GRACE: Duration = Duration::from_millis(20);
/// The stream's first fallback was a write larger than all shared memory.
const OVERSIZE: u8 = 4;

/// The part of a stream the session's pump shares with the application.
pub(crate) struct StreamShared {
    id: u32,
    recv: Mutex<RecvState>,
    status: AtomicU8,
}

fn lock(m: &Mutex<RecvState>) -> MutexGuard<'_, RecvState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StreamShared {
    pub(crate) fn new(id: u32) -> Self {
        Self {
            id,
            recv: Mutex::new(RecvState::default()),
            status: AtomicU8::new(0),
        }
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// Appends a run of received pieces under one lock (emptying `pieces`); for a stream
    /// closed locally they go to `recycle` instead. Returns the reader's waker, to call once
    /// every lock is released.
    pub(crate) fn push_all(
        &self,
        pieces: &mut Vec<Piece>,
        mut recycle: impl FnMut(Segment),
    ) -> Option<Waker> {
        let mut recv = lock(&self.recv);
        if recv.local_closed {
            drop(recv);
            for piece in pieces.drain(..) {
                if let Piece::Shm(segment) = piece {
                    recycle(segment);
                }
            }
            return None;
        }
        for piece in pieces.drain(..) {
            recv.buffer.push(piece);
        }
        recv.take_waker()
    }

    /// The peer closed the stream; returns the reader's waker (call it unlocked).
    #[must_use]
    pub(crate) fn peer_closed(&self) -> Option<Waker> {
        // SYNC: Release; pairs with the Acquire load in Link::route.
        self.status.fetch_or(PEER_CLOSED, Ordering::Release);
        let mut recv = lock(&self.recv);
        recv.peer_closed = true;
        recv.take_waker()
    }

    /// The session closed; returns the reader's waker (call it unlocked).
    #[must_use]
    pub(crate) fn session_closed(&self, reason: &CloseReason) -> Option<Waker> {
        let mut recv = lock(&self.recv);
        recv.session_closed = Some(reason.clone());
        recv.take_waker()
    }
}

/// How the next write travels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Queue,
    Fallback,
}

/// One open stream: closed on the wire when the last handle (stream or half) goes away.
pub(crate) struct Link {
    pub(crate) inner: Arc<Inner>,
    pub(crate) shared: Arc<StreamShared>,
    closed: AtomicBool,
    /// The slice list of the last reservation, kept for the next one.
    spare: Mutex<Vec<u32>>,
}

impl Link {
    pub(crate) fn new(inner: Arc<Inner>, shared: Arc<StreamShared>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            shared,
            closed: AtomicBool::new(false),
            spare: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn id(&self) -> u32 {
        self.shared.id
    }

    /// Whether the stream cannot be reused: closed here, closed by the peer, or its session
    /// is over.
    pub(crate) fn is_ended(&self) -> bool {
        let recv = lock(&self.shared.recv);
        recv.local_closed || recv.peer_closed || recv.session_closed.is_some()
    }

    fn is_closed(&self) -> bool {
        // SYNC: Acquire; pairs with the AcqRel swap in close.
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the stream: unread data is recycled and the peer is told (a close element, or
    /// a StreamClose frame when the queue is full). Idempotent; never waits.
    pub(crate) fn close(&self) {
        // SYNC: AcqRel; the swap makes close run once.
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let waker = {
            let mut recv = lock(&self.shared.recv);
            recv.local_closed = true;
            let inner = &self.inner;
            recv.buffer.drain(|segment| inner.recycle(segment));
            recv.take_waker()
        };
        if let Some(w) = waker {
            w.wake();
        }
        self.inner.close_stream(self.id(), self.is_fallback());
    }

    /// Whether this stream now sends over the socket because shared memory ran out.
    pub(crate) fn is_fallback(&self) -> bool {
        // SYNC: Acquire; pairs with the Release fetch_or in sent_fallback.
        self.shared.status.load(Ordering::Acquire) & FALLBACK != 0
    }

    /// How the next write travels, from this stream's own flags (no session lock).
    fn route(&self) -> Result<Route, Error> {
        if self.inner.is_closed() {
            return Err(self.inner.close_error());
        }
        if self.is_closed() {
            return Err(Error::StreamClosed);
        }
        // SYNC: Acquire; pairs with the Release fetch_or in peer_closed and sent_fallback.
        let status = self.shared.status.load(Ordering::Acquire);
        if status & PEER_CLOSED != 0 {
            return Err(Error::StreamClosed);
        }
        Ok(if status & FALLBACK != 0 {
            Route::Fallback
        } else {
            Route::Queue
        })
    }

    fn write_deadline(&self, timeout: Duration) -> Option<Instant> {
        (self.inner.settings.on_exhaustion == Exhaustion::Wait).then(|| Instant::now() + timeout)
    }

    /// Reserves `n` bytes: in shared memory when possible, on the heap when the stream is in
    /// fallback or memory ran out under the Fallback policy; waits under the Wait policy.
    pub(crate) async fn reserve_kind(
        &self,
        n: usize,
        write_timeout: Duration,
    ) -> Result<Reserved, Error> {
        if self.is_closed() {
            return Err(Error::StreamClosed);
        }
        let max = self.inner.settings.max_frame_len;
        // A write may have to travel as one FallbackData frame: 16 bytes of header and ids.
        if n > max as usize - 16 {
            return Err(Error::TooLarge { len: n, max });
        }
        match self.route()? {
            Route::Fallback => return Ok(Reserved::Heap(vec![0; n])),
            Route::Queue if n == 0 => return Ok(Reserved::Heap(Vec::new())),
            Route::Queue => {}
        }
        let buffers = &self.inner.shm.buffers;
        // One allocation at most: enough room for the chain Go's policy builds for `n`.
        let slice_max = u64::from(buffers.max_slice_size().max(1));
        let mut taken = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        taken.reserve((n as u64 / slice_max + 2).min(4096) as usize);
        let deadline = self.write_deadline(write_timeout);
        let mut pause = Duration::from_micros(50);
        let mut timer: Option<Box<dyn Timer>> = None;
        let mut grace = None;
        loop {
            // The slices as this process took them, kept in process memory: never read back
            // from links in shared memory, which the peer could rewrite.
            match buffers.alloc_into(n as u64, &mut taken) {
                Ok(_) => return Ok(Reserved::Shm(taken)),
                Err(BufferError::NoMoreBuffer { .. }) => {
                    self.inner
                        .lock_state()
                        .core
                        .metrics_mut()
                        .stability
                        .alloc_shm_error_count += 1;
                    let exhausted = Error::SharedMemoryExhausted { requested: n };
                    match self.inner.settings.on_exhaustion {
                        // A burst outruns the reader for a moment: wait a little for memory
                        // to come back before moving the stream to the socket for good (a
                        // write that could never fit falls back at once).
                        Exhaustion::Fallback
                            if n as u64 <= usable(buffers)
                                && *grace
                                    .get_or_insert_with(|| Instant::now() + FALLBACK_GRACE)
                                    > Instant::now() => {}
                        Exhaustion::Fallback => return Ok(Reserved::Heap(vec![0; n])),
                        Exhaustion::Error => return Err(exhausted),
                        // Waiting cannot help a write larger than all the memory.
                        Exhaustion::Wait if n as u64 > usable(buffers) => return Err(exhausted),
                        Exhaustion::Wait => {}
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(Error::Timeout);
                    }
                    // The peer gives memory back as it reads, without telling us: look
                    // again soon, then less often.
                    self.inner.pause(&mut timer, pause).await;
                    pause = (pause * 2).min(Duration::from_millis(2));
                    self.route()?;
                }
                Err(e) => return Err(self.inner.fail_buffers(e)),
            }
        }
    }

    /// Publishes `written` bytes of a reservation (one element, or one fallback frame), or
    /// returns its slices.
    async fn commit(
        &self,
        kind: &Reserved,
        written: usize,
        write_timeout: Duration,
    ) -> Result<(), Error> {
        if written == 0 {
            release(self, kind);
            return Ok(());
        }
        let route = match self.route() {
            Ok(route) => route,
            Err(e) => {
                release(self, kind);
                return Err(e);
            }
        };
        match (route, kind) {
            (Route::Queue, Reserved::Shm(slices)) => {
                self.publish(slices, written, write_timeout).await
            }
            (Route::Fallback, Reserved::Shm(slices)) => {
                let mut bytes = Vec::with_capacity(written);
                for s in pieces(&self.inner.shm.buffers, slices, written) {
                    bytes.extend_from_slice(self.inner.shm.bytes(s.data, s.len));
                }
                release(self, kind);
                self.send_fallback(&bytes).await
            }
            (_, Reserved::Heap(bytes)) => self.send_fallback(&bytes[..written]).await,
        }
    }

    async fn publish(
        &self,
        slices: &[u32],
        written: usize,
        write_timeout: Duration,
    ) -> Result<(), Error> {
        let used = self.prepare_chain(slices, written)?;
        // Until the push succeeds the slices are ours: a failed push, or this future dropped
        // while it waits for queue room, gives them back.
        let mut unpushed = Unpushed {
            link: self,
            slices: &slices[..used],
            armed: true,
        };
        let deadline = self.write_deadline(write_timeout);
        let pushed = self
            .inner
            .push_element(Element::data(self.id(), slices[0]), deadline)
            .await?;
        // Pushed: the slices are the peer's now, whatever happens next.
        unpushed.armed = false;
        match pushed {
            Pushed::Quiet => {}
            Pushed::Notify => self.inner.send_polling().await?,
            Pushed::Broken(e) => return Err(e),
        }
        self.inner.count_out_flow(written as u64);
        Ok(())
    }

    /// Sets the lengths of the slices that hold `written` bytes, cuts the chain after them,
    /// hands them over and returns the rest: after this only a push is missing. Returns how
    /// many slices carry data. On error every slice is recycled (nothing was announced).
    fn prepare_chain(&self, slices: &[u32], written: usize) -> Result<usize, Error> {
        let buffers = &self.inner.shm.buffers;
        let mut used = 0;
        let prepared = (|| {
            for piece in pieces(buffers, slices, written) {
                buffers.set_len(piece.slice, piece.len)?;
                used += 1;
            }
            // Never send empty slices: cut the chain after the last one used.
            buffers.end_chain_at(slices[used - 1])?;
            // From the push on the slices are the peer's: give up our claim first, so that a
            // peer quick enough to recycle and send one back finds it not ours.
            for (k, &slice) in slices[..used].iter().enumerate() {
                if let Err(e) = buffers.hand_over(slice) {
                    for &back in &slices[..k] {
                        let _ = buffers.take_back(back);
                    }
                    return Err(e);
                }
            }
            Ok(())
        })();
        if let Err(e) = prepared {
            for &slice in slices {
                let _ = buffers.recycle(slice);
            }
            return Err(e.into());
        }
        for &slice in &slices[used..] {
            let _ = buffers.recycle(slice);
        }
        Ok(used)
    }

    #[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
    /// One attempt to send `data` without waiting, for `poll_write`: `Ok(None)` when it must
    /// wait (memory under the Wait policy, or a full queue); nothing was sent then.
    pub(crate) fn try_send(&self, data: &[u8]) -> Result<Option<usize>, Error> {
        let max = self.inner.settings.max_frame_len as usize - 16;
        let data = &data[..data.len().min(max)];
        if data.is_empty() {
            return Ok(Some(0));
        }
        if self.route()? == Route::Fallback {
            return self.try_fallback(data).map(Some);
        }
        let buffers = &self.inner.shm.buffers;
        let mut taken = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        match buffers.alloc_into(data.len() as u64, &mut taken) {
            Ok(_) => {}
            Err(BufferError::NoMoreBuffer { .. }) => {
                *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = taken;
                self.inner
                    .lock_state()
                    .core
                    .metrics_mut()
                    .stability
                    .alloc_shm_error_count += 1;
                let exhausted = Error::SharedMemoryExhausted {
                    requested: data.len(),
                };
                return match self.inner.settings.on_exhaustion {
                    Exhaustion::Fallback => self.try_fallback(data).map(Some),
                    Exhaustion::Error => Err(exhausted),
                    Exhaustion::Wait if data.len() as u64 > usable(buffers) => Err(exhausted),
                    Exhaustion::Wait => Ok(None),
                };
            }
            Err(e) => return Err(self.inner.fail_buffers(e)),
        }
        let mut r =
            Reservation::<Async>::new(self, data.len(), Reserved::Shm(taken), Duration::ZERO);
        r.write_at(0, data);
        r.done = true;
        let Reserved::Shm(slices) = &r.kind else {
            unreachable!("made as Shm above")
        };
        let used = self.prepare_chain(slices, data.len())?;
        match self.inner.try_push(Element::data(self.id(), slices[0])) {
            Ok(true) => {
                self.inner.count_out_flow(data.len() as u64);
                Ok(Some(data.len()))
            }
            Ok(false) => {
                // Full: nothing reached the peer, the slices are still ours.
                for &slice in &slices[..used] {
                    if buffers.take_back(slice).is_ok() {
                        let _ = buffers.recycle(slice);
                    }
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    #[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
    /// Queues `data` as one FallbackData frame without waiting (what the socket does not take
    /// now waits in the out buffer; `poll_flush` waits for it).
    fn try_fallback(&self, data: &[u8]) -> Result<usize, Error> {
        let frame = Frame::new(
            self.inner.version(),
            Message::FallbackData {
                stream_id: self.id(),
                status: 0,
                data,
            },
        );
        self.inner.queue_frame(&frame)?;
        self.note_fallback(data.len());
        Ok(data.len())
    }

    fn note_fallback(&self, len: usize) {
        // A write larger than all shared memory could never fit: its fallback (and the
        // stream's later writes, on the socket only because of it) say nothing about memory
        // running out, so they do not trip the circuit breaker.
        let oversize = len as u64 > usable(&self.inner.shm.buffers);
        let bits = if oversize {
            FALLBACK | OVERSIZE
        } else {
            FALLBACK
        };
        // SYNC: Release; pairs with the Acquire loads in route and is_fallback.
        let before = self.shared.status.fetch_or(bits, Ordering::Release);
        if before & FALLBACK == 0 {
            // Once per stream, not per message.
            tracing::debug!(target: "shmlink::stream", session = self.inner.id, stream = self.id(), oversize, "stream falls back to the socket");
        }
        let exhausted = !oversize && (before & OVERSIZE == 0 || before & FALLBACK == 0);
        let now = self.inner.now_ms();
        self.inner
            .lock_state()
            .core
            .sent_fallback_data(self.id(), len as u64, now, exhausted);
    }

    async fn send_fallback(&self, data: &[u8]) -> Result<(), Error> {
        let frame = Frame::new(
            self.inner.version(),
            Message::FallbackData {
                stream_id: self.id(),
                status: 0,
                data,
            },
        );
        // Marked before waiting for the socket: from now on this stream's bytes must follow
        // the frame, even if this future is dropped while the frame is still being flushed.
        let flushed = self.inner.queue_frame(&frame)?;
        self.note_fallback(data.len());
        if !flushed {
            self.inner.wait_flushed().await?;
        }
        Ok(())
    }

    /// Reserves, copies `data` in and commits: one flush.
    pub(crate) async fn send(&self, data: &[u8], write_timeout: Duration) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let mut r = Reservation::<Blocking>::new(
            self,
            data.len(),
            self.reserve_kind(data.len(), write_timeout).await?,
            write_timeout,
        );
        r.write_at(0, data);
        r.done = true;
        let result = self.commit(&r.kind, data.len(), write_timeout).await;
        drop(r);
        result
    }
}

/// Slices handed over for a push that has not happened: returned to their lists on drop.
struct Unpushed<'a> {
    link: &'a Link,
    slices: &'a [u32],
    armed: bool,
}

impl Drop for Unpushed<'_> {
    fn drop(&mut self) {
        if self.armed {
            let buffers = &self.link.inner.shm.buffers;
            for &slice in self.slices {
                if buffers.take_back(slice).is_ok() {
                    let _ = buffers.recycle(slice);
                }
            }
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits until the receive buffer has data (`true`) or the stream ended (`false`).
fn poll_readable(
    slot: &mut WaitSlot,
    cx: &mut Context<'_>,
    link: &Link,
    deadline: Option<Instant>,
) -> Poll<Result<bool, Error>> {
    let shared = &link.shared;
    link.inner.poll_wait(cx, slot, deadline, |cx| {
        let mut recv = lock(&shared.recv);
        if recv.local_closed {
            return Some(Err(Error::StreamClosed));
        }
        if !recv.buffer.is_empty() {
            return Some(Ok(true));
        }
        if recv.peer_closed {
            return Some(Ok(false));
        }
        if let Some(reason) = &recv.session_closed {
            return Some(Err(reason.error()));
        }
        match &recv.reader {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => recv.reader = Some(cx.waker().clone()),
        }
        None
    })
}

/// The 4-byte big-endian length prefix of a message of `body`'s length.
pub(crate) fn message_len(body: &[u8]) -> Result<[u8; 4], Error> {
    u32::try_from(body.len())
        .map(u32::to_be_bytes)
        .map_err(|_| Error::TooLarge {
            len: body.len(),
            max: u32::MAX,
        })
}

/// A received piece as `Bytes` from `offset` on: zero copy, the slice going back to its free
/// list when the last `Bytes` of it is dropped.
fn piece_bytes(inner: &Arc<Inner>, piece: Piece, offset: usize) -> Bytes {
    match piece {
        Piece::Shm(segment) => Bytes::from_owner(View {
            inner: Arc::clone(inner),
            kind: ViewKind::Shm {
                segment,
                start: offset as u32,
            },
        }),
        Piece::Heap(vec) => Bytes::from(vec).slice(offset..),
    }
}

/// A wait slot that gives up its spin when the wait is dropped unfinished.
pub(crate) struct Forget<'a> {
    pub(crate) slot: &'a mut WaitSlot,
    pub(crate) inner: &'a Inner,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.inner.forget(self.slot);
    }
}

/// The read side of a stream: bytes taken out of the receive buffer and not consumed yet, and
/// the waiter's bookkeeping.
pub(crate) struct ReadSide {
    /// Bytes taken out of the receive buffer (zero copy, as a `Bytes` owning its slice) and
    /// not consumed yet: every read looks here first.
    rest: Bytes,
    slot: WaitSlot,
    pub(crate) read_timeout: Option<Duration>,
}

impl ReadSide {
    pub(crate) fn new() -> Self {
        Self {
            rest: Bytes::new(),
            slot: WaitSlot::new(),
            read_timeout: None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.read_timeout.map(|t| Instant::now() + t)
    }

    /// Bytes received and not yet read.
    pub(crate) fn available(&self, link: &Link) -> usize {
        link.inner.pump_now();
        self.rest.len() + lock(&link.shared.recv).buffer.len()
    }

    /// Waits until the receive buffer has data (`true`) or the stream ended (`false`).
    /// Cancellation-safe: nothing is taken from the buffer.
    pub(crate) fn poll_readable(
        &mut self,
        cx: &mut Context<'_>,
        link: &Link,
        deadline: Option<Instant>,
    ) -> Poll<Result<bool, Error>> {
        poll_readable(&mut self.slot, cx, link, deadline)
    }

    async fn readable(&mut self, link: &Link, deadline: Option<Instant>) -> Result<bool, Error> {
        // Dropped while waiting (a timeout, a `select!`): give up any spin for the session.
        let wait = Forget {
            slot: &mut self.slot,
            inner: &link.inner,
        };
        poll_fn(|cx| poll_readable(wait.slot, cx, link, deadline)).await
    }

    /// The next received piece, zero copy, or `None` at the end of the stream.
    pub(crate) async fn read_view(&mut self, link: &Arc<Link>) -> Result<Option<View>, Error> {
        if !self.rest.is_empty() {
            return Ok(Some(View {
                inner: Arc::clone(&link.inner),
                kind: ViewKind::Bytes(std::mem::take(&mut self.rest)),
            }));
        }
        let deadline = self.deadline();
        loop {
            if !self.readable(link, deadline).await? {
                return Ok(None);
            }
            let Some((piece, offset)) = lock(&link.shared.recv).buffer.pop_front() else {
                continue;
            };
            let kind = match piece {
                Piece::Shm(segment) => ViewKind::Shm {
                    segment,
                    start: offset as u32,
                },
                Piece::Heap(bytes) => ViewKind::Heap(bytes, offset),
            };
            return Ok(Some(View {
                inner: Arc::clone(&link.inner),
                kind,
            }));
        }
    }

    /// The next non-empty received piece as `Bytes` (zero copy), waiting until `deadline` if
    /// `wait`. `None`: nothing to take (end of stream, or nothing buffered and not waiting).
    async fn next_piece(
        &mut self,
        link: &Link,
        wait: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<Bytes>, Error> {
        loop {
            if wait && !self.readable(link, deadline).await? {
                return Ok(None);
            }
            let Some((piece, offset)) = lock(&link.shared.recv).buffer.pop_front() else {
                if wait {
                    continue;
                }
                return Ok(None);
            };
            let bytes = piece_bytes(&link.inner, piece, offset);
            // An empty piece (a peer may send an empty fallback frame) is no data: skip it,
            // so a `Buf` never shows an empty chunk with bytes remaining.
            if !bytes.is_empty() {
                return Ok(Some(bytes));
            }
        }
    }

    /// Makes `rest` hold at least `n` contiguous bytes: zero copy when the first piece holds
    /// them, else copied once per piece joined. The read timeout bounds the whole call.
    /// `Ok(false)` at the end of the stream with nothing read. Cancellation-safe: what was
    /// taken is in `rest` at every await.
    async fn fill_contiguous(&mut self, link: &Link, n: usize) -> Result<bool, Error> {
        let deadline = self.deadline();
        while self.rest.len() < n {
            match self.next_piece(link, true, deadline).await? {
                Some(piece) if self.rest.is_empty() => self.rest = piece,
                Some(piece) => {
                    let mut joined = bytes::BytesMut::with_capacity(self.rest.len() + piece.len());
                    joined.extend_from_slice(&self.rest);
                    joined.extend_from_slice(&piece);
                    self.rest = joined.freeze();
                }
                None if self.rest.is_empty() => return Ok(false),
                None => return Err(Error::StreamEnded),
            }
        }
        Ok(true)
    }

    pub(crate) async fn read_bytes(
        &mut self,
        link: &Link,
        n: usize,
    ) -> Result<Option<Bytes>, Error> {
        if !self.fill_contiguous(link, n).await? {
            return Ok(None);
        }
        let bytes = self.rest.split_to(n);
        self.release_empty_rest();
        Ok(Some(bytes))
    }

    pub(crate) async fn peek(&mut self, link: &Link, n: usize) -> Result<Option<Bytes>, Error> {
        if !self.fill_contiguous(link, n).await? {
            return Ok(None);
        }
        Ok(Some(self.rest.slice(..n)))
    }

    pub(crate) async fn read_buf(
        &mut self,
        link: &Link,
        n: usize,
    ) -> Result<Option<Pieces>, Error> {
        let deadline = self.deadline();
        let mut pieces = Pieces::default();
        while pieces.remaining() < n {
            if self.rest.is_empty() {
                // Wait (bounded by the read timeout) only for the first byte.
                let wait = pieces.remaining() == 0;
                match self.next_piece(link, wait, deadline).await? {
                    Some(piece) => self.rest = piece,
                    None => break,
                }
            }
            let take = self.rest.len().min(n - pieces.remaining());
            pieces.push(self.rest.split_to(take));
            self.release_empty_rest();
        }
        Ok((pieces.remaining() > 0).then_some(pieces))
    }

    /// The next length-prefixed message (4-byte big-endian length, then the body: the framing
    /// of shmipc-go's examples), zero copy when it lies in one slice; `None` at a clean end of
    /// the stream. Cancellation-safe: the length is only peeked until the whole message is
    /// there, then both are taken at once.
    pub(crate) async fn recv_message(
        &mut self,
        link: &Link,
        max: usize,
    ) -> Result<Option<Bytes>, Error> {
        let Some(prefix) = self.peek(link, 4).await? else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        drop(prefix);
        if len > max {
            return Err(Error::MessageTooLarge { len, max });
        }
        let Some(mut message) = self.read_bytes(link, 4 + len).await? else {
            return Err(Error::StreamEnded);
        };
        Ok(Some(message.split_off(4)))
    }

    /// Everything received so far, as zero-copy pieces: waits (within the read timeout) for
    /// the first, then takes every piece buffered under one lock. A pipelined reader pays its
    /// fixed cost once per burst instead of once per message. `None` at the end of the stream.
    pub(crate) async fn read_batch(&mut self, link: &Link) -> Result<Option<Pieces>, Error> {
        let mut pieces = Pieces::default();
        if !self.rest.is_empty() {
            pieces.push(std::mem::take(&mut self.rest));
        }
        let deadline = self.deadline();
        loop {
            if pieces.remaining() == 0 && !self.readable(link, deadline).await? {
                return Ok(None);
            }
            {
                let mut recv = lock(&link.shared.recv);
                while let Some((piece, offset)) = recv.buffer.pop_front() {
                    let bytes = piece_bytes(&link.inner, piece, offset);
                    if !bytes.is_empty() {
                        pieces.push(bytes);
                    }
                }
            }
            if pieces.remaining() > 0 {
                return Ok(Some(pieces));
            }
        }
    }

    /// An empty `rest` still holding its slice's owner would keep the slice from its free
    /// list; let it go.
    fn release_empty_rest(&mut self) {
        if self.rest.is_empty() {
            self.rest = Bytes::new();
        }
    }

    /// Copies received bytes into `buf` (no allocation); `Ok(0)` at the end of the stream.
    pub(crate) fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        link: &Link,
        buf: &mut [u8],
        deadline: Option<Instant>,
    ) -> Poll<Result<usize, Error>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if !self.rest.is_empty() {
            let n = self.rest.len().min(buf.len());
            buf[..n].copy_from_slice(&self.rest[..n]);
            self.rest.advance(n);
            self.release_empty_rest();
            return Poll::Ready(Ok(n));
        }
        loop {
            match self.poll_readable(cx, link, deadline) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            let inner = &link.inner;
            let n = lock(&link.shared.recv).buffer.read(
                buf,
                |segment| inner.shm.bytes(segment.data, segment.len),
                |segment| inner.recycle(segment),
            );
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
        }
    }

    /// The read side is going away: give up any spin it holds for the session.
    pub(crate) fn forget(&mut self, link: &Link) {
        link.inner.forget(&mut self.slot);
    }
}

/// One stream of a session, blocking API. Dropping it closes it (the peer is told, as Go does).
///
/// ```no_run
/// use std::io::{Read, Write};
/// # fn demo(session: &shmlink::Session) -> Result<(), Box<dyn std::error::Error>> {
/// let mut stream = session.open_stream()?;
/// stream.write_all(b"hello")?; // copied into shared memory and published
/// let mut reply = [0u8; 5];
/// stream.read_exact(&mut reply)?;
/// # Ok(()) }
/// ```
pub struct Stream {
    link: Arc<Link>,
    read: ReadSide,
    write_timeout: Duration,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.link.id())
            .field("closed", &self.link.is_closed())
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(inner: Arc<Inner>, shared: Arc<StreamShared>) -> Self {
        let write_timeout = inner.settings.write_timeout;
        Self {
            link: Link::new(inner, shared),
            read: ReadSide::new(),
            write_timeout,
        }
    }

    /// The stream id (the client's first stream is 2).
    pub fn id(&self) -> u32 {
        self.link.id()
    }

    /// Bounds every blocking read (`None`: wait for ever, until data, end or session close).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read.read_timeout = timeout;
    }

    /// Bounds how long a write waits for shared memory or queue room under
    /// [`Exhaustion::Wait`](crate::Exhaustion) (default: [`Config::write_timeout`](crate::Config)).
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    /// Whether this stream now sends over the socket because shared memory ran out.
    pub fn is_fallback(&self) -> bool {
        self.link.is_fallback()
    }

    /// Whether the stream cannot be reused: closed here, closed by the peer, or its session
    /// is over.
    pub(crate) fn is_ended(&self) -> bool {
        self.link.is_ended()
    }

    /// The session this stream belongs to.
    pub(crate) fn session_inner(&self) -> &Arc<Inner> {
        &self.link.inner
    }

    /// Reserves `n` bytes to write into directly. In shared memory when possible (one slice
    /// if `n` fits the largest slice size, else a chain), on the heap when shared memory is
    /// exhausted under the Fallback policy or the stream is in fallback;
    /// [`Reservation::commit`] publishes it either way.
    pub fn reserve(&self, n: usize) -> Result<Reservation<'_>, Error> {
        let kind = block_on(self.link.reserve_kind(n, self.write_timeout))?;
        Ok(Reservation::new(&self.link, n, kind, self.write_timeout))
    }

    /// Writes `data` as one flush (copied once, into shared memory).
    pub fn send(&self, data: &[u8]) -> Result<(), Error> {
        block_on(self.link.send(data, self.write_timeout))
    }

    /// The next received piece, zero copy, or `None` at the end of the stream (the peer
    /// closed it and everything before the close has been read).
    pub fn read_view(&mut self) -> Result<Option<View>, Error> {
        block_on(self.read.read_view(&self.link))
    }

    /// Bytes received and not yet read (takes in what the peer sent meanwhile; never
    /// waits).
    pub fn available(&self) -> usize {
        self.read.available(&self.link)
    }

    /// Reads exactly `n` bytes as [`Bytes`], waiting for them (bounded by the read timeout).
    ///
    /// No copy when the `n` bytes lie in one received slice: the `Bytes` then points into
    /// shared memory, and the slice returns to its free list when the last `Bytes` (or other
    /// reader) that uses it is dropped. Bytes spanning slices are copied once into a fresh
    /// buffer. `Ok(None)` at the end of the stream; if the stream ends after fewer than `n`
    /// bytes, [`Error::StreamEnded`] and the bytes stay readable. On a timeout nothing is
    /// consumed.
    ///
    /// ```no_run
    /// # fn demo(stream: &mut shmlink::Stream) -> Result<(), shmlink::Error> {
    /// // A length-prefixed message, zero copy when it fits one slice.
    /// if let Some(len) = stream.read_bytes(4)? {
    ///     let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    ///     let body = stream.read_bytes(len)?.ok_or(shmlink::Error::StreamEnded)?;
    ///     assert_eq!(body.len(), len);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn read_bytes(&mut self, n: usize) -> Result<Option<Bytes>, Error> {
        block_on(self.read.read_bytes(&self.link, n))
    }

    /// The next `n` bytes without consuming them (zero copy when they lie in one slice, as
    /// [`read_bytes`](Self::read_bytes)); `Ok(None)` at the end of the stream.
    pub fn peek(&mut self, n: usize) -> Result<Option<Bytes>, Error> {
        block_on(self.read.peek(&self.link, n))
    }

    /// Up to `n` received bytes as a chain of zero-copy pieces, one per slice, implementing
    /// [`bytes::Buf`]; waits for at least one byte. `Ok(None)` at the end of the stream.
    pub fn read_buf(&mut self, n: usize) -> Result<Option<Pieces>, Error> {
        block_on(self.read.read_buf(&self.link, n))
    }

    /// Sends `body` as one length-prefixed message: a 4-byte big-endian length, then the
    /// body, written into one reservation of shared memory and published with one queue
    /// element (the framing of shmipc-go's examples; [`recv_message`](Self::recv_message)
    /// reads it).
    ///
    /// ```no_run
    /// # fn demo(stream: &mut shmlink::Stream) -> Result<(), shmlink::Error> {
    /// stream.send_message(b"request")?;
    /// if let Some(reply) = stream.recv_message(1 << 20)? {
    ///     println!("{} bytes", reply.len()); // `Bytes`, zero copy within one slice
    /// }
    /// # Ok(()) }
    /// ```
    pub fn send_message(&self, body: &[u8]) -> Result<(), Error> {
        let len = message_len(body)?;
        let mut r = self.reserve(4 + body.len())?;
        r.write_at(0, &len);
        r.write_at(4, body);
        r.commit(4 + body.len())
    }

    /// The next length-prefixed message (see [`send_message`](Self::send_message)) as
    /// `Bytes`, zero copy when it lies in one slice; `Ok(None)` at a clean end of the stream,
    /// [`Error::StreamEnded`] if it ends inside a message, [`Error::MessageTooLarge`] (nothing
    /// consumed) if the peer announces more than `max` bytes: the length comes from the
    /// peer, so no more than `max` is ever buffered for it.
    pub fn recv_message(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        block_on(self.read.recv_message(&self.link, max))
    }

    /// Everything received so far as zero-copy pieces ([`bytes::Buf`] over them), waiting
    /// (within the read timeout) only for the first: one call for a whole burst of messages.
    /// `Ok(None)` at the end of the stream. A batch can hold much of shared memory: iterate
    /// it by value (or `advance` the `Buf`) to give each slice back as you go, so that a
    /// writer faster than you keeps finding memory.
    ///
    /// ```no_run
    /// # fn demo(stream: &mut shmlink::Stream) -> Result<(), shmlink::Error> {
    /// use bytes::Buf;
    /// while let Some(mut batch) = stream.read_batch()? {
    ///     while batch.remaining() >= 4 {
    ///         let _word = batch.get_u32(); // across slice boundaries
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn read_batch(&mut self) -> Result<Option<Pieces>, Error> {
        block_on(self.read.read_batch(&self.link))
    }

    /// Closes the stream: unread data is recycled and the peer is told (a close element, or
    /// a StreamClose frame when the queue is full). Idempotent.
    pub fn close(&mut self) {
        self.read.forget(&self.link);
        self.link.close();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.close();
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = self.read.deadline();
        let (read, link) = (&mut self.read, &self.link);
        Ok(block_on(poll_fn(|cx| {
            read.poll_read_into(cx, link, buf, deadline)
        }))?)
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The most one allocation can ever get: every list's slices but the one each keeps free.
fn usable(buffers: &shmlink_core::buffer::BufferManager<'_>) -> u64 {
    buffers
        .lists()
        .iter()
        .map(|l| u64::from(l.capacity().saturating_sub(1)) * u64::from(l.slice_size()))
        .sum()
}

/// One slice of a reservation: its header, its data and how many of its bytes are reserved.
struct Slice {
    slice: u32,
    data: u32,
    len: u32,
}

/// The pieces of a reservation of `len` bytes over `slices` (ours, in chain order): every
/// slice full but the last.
fn pieces<'b>(
    buffers: &'b shmlink_core::buffer::BufferManager<'_>,
    slices: &'b [u32],
    len: usize,
) -> impl Iterator<Item = Slice> + 'b {
    let mut left = len as u64;
    slices.iter().map_while(move |&slice| {
        let (data, cap) = buffers.data_area(slice).ok()?;
        let take = u64::from(cap).min(left) as u32;
        left -= u64::from(take);
        (take > 0).then_some(Slice {
            slice,
            data,
            len: take,
        })
    })
}

pub(crate) enum Reserved {
    /// Slices of shared memory, as allocated (absolute offsets, chain order).
    Shm(Vec<u32>),
    Heap(Vec<u8>),
}

/// The blocking flavour of a [`Reservation`]: `commit` blocks.
#[derive(Debug)]
pub struct Blocking;

/// The async flavour of a [`Reservation`]: `commit` is a future.
#[derive(Debug)]
pub struct Async;

/// Space reserved on a stream, written in place and published by `commit`. Dropping it
/// unpublished returns its slices. It implements [`bytes::BufMut`] and [`io::Write`], so a
/// serializer can encode straight into shared memory.
///
/// ```no_run
/// # fn demo(stream: &shmlink::Stream) -> Result<(), shmlink::Error> {
/// let payload = b"zero copy";
/// let mut r = stream.reserve(4 + payload.len())?;
/// r.write_at(0, &(payload.len() as u32).to_be_bytes());
/// r.write_at(4, payload);
/// r.commit(4 + payload.len())?;
/// # Ok(()) }
/// ```
pub struct Reservation<'s, M = Blocking> {
    link: &'s Link,
    len: usize,
    kind: Reserved,
    done: bool,
    /// Where `BufMut` and `io::Write` write next.
    pos: usize,
    write_timeout: Duration,
    mode: PhantomData<M>,
}

impl<M> std::fmt::Debug for Reservation<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("len", &self.len)
            .field("shared_memory", &self.is_shared_memory())
            .finish()
    }
}

impl<'s, M> Reservation<'s, M> {
    pub(crate) fn new(link: &'s Link, len: usize, kind: Reserved, write_timeout: Duration) -> Self {
        Self {
            link,
            len,
            kind,
            done: false,
            pos: 0,
            write_timeout,
            mode: PhantomData,
        }
    }

    /// Bytes reserved.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was reserved.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the bytes are in shared memory (false: heap, will travel as fallback).
    pub fn is_shared_memory(&self) -> bool {
        matches!(self.kind, Reserved::Shm(_))
    }

    /// The reserved bytes, in order: one piece per slice (just one if the reservation fit a
    /// slice), together exactly [`len`](Self::len) bytes.
    pub fn chunks_mut(&mut self) -> Vec<&mut [u8]> {
        match &mut self.kind {
            Reserved::Heap(v) => vec![v.as_mut_slice()],
            Reserved::Shm(slices) => {
                let shm = &self.link.inner.shm;
                let mut out = Vec::with_capacity(slices.len());
                out.extend(
                    pieces(&shm.buffers, slices, self.len)
                        // SAFETY: each slice was allocated by us for this reservation and is
                        // neither published nor recycled while `self` is mutably borrowed;
                        // the pieces are disjoint slices.
                        .map(|s| unsafe { shm.bytes_mut(s.data, s.len) }),
                );
                out
            }
        }
    }

    /// Copies `data` into the reservation at `offset`, across slice boundaries.
    ///
    /// # Panics
    ///
    /// If `offset + data.len()` exceeds the reservation.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) {
        assert!(
            offset + data.len() <= self.len,
            "write past the end of a reservation"
        );
        let mut skip = offset;
        let mut data = data;
        let mut at = 0;
        while !data.is_empty() {
            let piece = self.piece_at(at);
            let plen = piece.len();
            if plen == 0 {
                break;
            }
            if skip >= plen {
                skip -= plen;
                at += plen;
                continue;
            }
            let n = (plen - skip).min(data.len());
            piece[skip..skip + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            at += plen;
            skip = 0;
        }
    }

    /// Bytes written so far through [`BufMut`] or [`io::Write`] (the write cursor).
    pub fn written(&self) -> usize {
        self.pos
    }

    /// The writable piece holding byte `pos` of the reservation, from `pos` on.
    fn piece_at(&mut self, pos: usize) -> &mut [u8] {
        match &mut self.kind {
            Reserved::Heap(v) => &mut v[pos.min(self.len)..],
            Reserved::Shm(slices) => {
                let shm = &self.link.inner.shm;
                let mut skip = pos;
                for s in pieces(&shm.buffers, slices, self.len) {
                    if skip < s.len as usize {
                        // SAFETY: the slice was allocated by us for this reservation and is
                        // neither published nor recycled while `self` is mutably borrowed.
                        let piece = unsafe { shm.bytes_mut(s.data, s.len) };
                        return &mut piece[skip..];
                    }
                    skip -= s.len as usize;
                }
                &mut []
            }
        }
    }
}

impl Reservation<'_, Blocking> {
    /// Publishes the first `written` bytes (one queue element, or one fallback frame) and
    /// returns any unused slices.
    pub fn commit(mut self, written: usize) -> Result<(), Error> {
        self.done = true;
        let written = written.min(self.len);
        block_on(self.link.commit(&self.kind, written, self.write_timeout))
        // Drop gives the slice list back to the stream for the next reservation.
    }

    /// Publishes what was written through [`BufMut`] or [`io::Write`]: `commit(written())`.
    ///
    /// ```no_run
    /// # fn demo(stream: &shmlink::Stream) -> Result<(), shmlink::Error> {
    /// use bytes::BufMut;
    /// let mut r = stream.reserve(64)?;
    /// r.put_u32(5); // a serializer writing straight into shared memory
    /// r.put_slice(b"hello");
    /// r.commit_written()?;
    /// # Ok(()) }
    /// ```
    pub fn commit_written(self) -> Result<(), Error> {
        let n = self.pos;
        self.commit(n)
    }
}

impl Reservation<'_, Async> {
    /// Publishes the first `written` bytes (one queue element, or one fallback frame) and
    /// returns any unused slices.
    ///
    /// Cancellation: dropping the future before it completes may lose the message (the
    /// reservation is consumed); a message is published at most once.
    pub async fn commit(mut self, written: usize) -> Result<(), Error> {
        self.done = true;
        let written = written.min(self.len);
        self.link
            .commit(&self.kind, written, self.write_timeout)
            .await
    }

    /// Publishes what was written through [`BufMut`] or [`io::Write`].
    pub async fn commit_written(self) -> Result<(), Error> {
        let n = self.pos;
        self.commit(n).await
    }
}

// SAFETY: `chunk_mut` hands out the writable bytes of the reservation from the cursor on
// (memory this reservation owns: its slices or its heap buffer), `remaining_mut` is exactly
// what is left of it, and `advance_mut` refuses to move the cursor past the end, so the cursor
// only ever covers bytes that were written through `chunk_mut`.
unsafe impl<M> BufMut for Reservation<'_, M> {
    fn remaining_mut(&self) -> usize {
        self.len - self.pos
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        assert!(
            cnt <= self.len - self.pos,
            "advance past the end of a reservation"
        );
        self.pos += cnt;
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        let pos = self.pos;
        bytes::buf::UninitSlice::new(self.piece_at(pos))
    }
}

/// Copies into the reservation at the cursor; a full reservation writes 0 bytes (so
/// `write_all` past the end is a `WriteZero` error, never a reallocation).
impl<M> io::Write for Reservation<'_, M> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() && self.pos < self.len {
            let pos = self.pos;
            let piece = self.piece_at(pos);
            let n = piece.len().min(buf.len() - done);
            if n == 0 {
                break;
            }
            piece[..n].copy_from_slice(&buf[done..done + n]);
            self.pos += n;
            done += n;
        }
        Ok(done)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn release(link: &Link, kind: &Reserved) {
    if let Reserved::Shm(slices) = kind {
        for &slice in slices {
            let _ = link.inner.shm.buffers.recycle(slice);
        }
    }
}

impl<M> Drop for Reservation<'_, M> {
    fn drop(&mut self) {
        if !self.done {
            release(self.link, &self.kind);
        }
        // The list of slices is the stream's to reuse: no allocation per message.
        if let Reserved::Shm(slices) = &mut self.kind {
            let mut slices = std::mem::take(slices);
            slices.clear();
            *self.link.spare.lock().unwrap_or_else(|e| e.into_inner()) = slices;
        }
    }
}

/// Received bytes as a chain of pieces (one per slice, zero copy), from `read_buf`; a
/// [`bytes::Buf`]. Each slice returns to its free list when its piece is consumed or the
/// chain is dropped.
#[derive(Debug, Default)]
pub struct Pieces {
    pieces: VecDeque<Bytes>,
    len: usize,
}

impl Pieces {
    fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        self.pieces.push_back(piece);
    }

    /// The pieces, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.pieces.iter()
    }
}

/// By value: each piece is a `Bytes` whose drop gives its slice back, so a reader that works
/// through a large batch piece by piece frees shared memory as it goes.
impl IntoIterator for Pieces {
    type Item = Bytes;
    type IntoIter = std::collections::vec_deque::IntoIter<Bytes>;

    fn into_iter(self) -> Self::IntoIter {
        self.pieces.into_iter()
    }
}

impl Buf for Pieces {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.pieces.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of the pieces");
        self.len -= cnt;
        while cnt > 0 {
            let Some(front) = self.pieces.front_mut() else {
                break;
            };
            if cnt < front.len() {
                front.advance(cnt);
                break;
            }
            cnt -= front.len();
            self.pieces.pop_front();
        }
    }
}

enum ViewKind {
    Shm {
        segment: Segment,
        start: u32,
    },
    Heap(Vec<u8>, usize),
    /// Bytes a `read_bytes`/`peek` left over (zero copy into a slice, or a heap buffer).
    Bytes(Bytes),
}

/// Received bytes, zero copy when they came through shared memory. Dropping the view
/// returns its slice to the free list.
///
/// The bytes live in memory the peer process can write. A peer that follows the protocol
/// does not touch a slice it sent until we recycle it, but a hostile peer could change the
/// bytes while you read them; copy them first if you must validate and then use them.
pub struct View {
    inner: Arc<Inner>,
    kind: ViewKind,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("len", &self.len())
            .field("shared_memory", &self.is_shared_memory())
            .finish()
    }
}

impl View {
    /// Whether the bytes are in shared memory (false: they came in a fallback frame).
    pub fn is_shared_memory(&self) -> bool {
        matches!(self.kind, ViewKind::Shm { .. })
    }
}

impl Deref for View {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.kind {
            ViewKind::Shm { segment, start } => self
                .inner
                .shm
                .bytes(segment.data + start, segment.len - start),
            ViewKind::Heap(bytes, start) => &bytes[*start..],
            ViewKind::Bytes(bytes) => bytes,
        }
    }
}

impl AsRef<[u8]> for View {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for View {
    fn drop(&mut self) {
        if let ViewKind::Shm { segment, .. } = self.kind {
            self.inner.recycle(segment);
        }
    }
}
