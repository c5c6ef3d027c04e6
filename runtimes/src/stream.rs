//! Streams: ordered byte streams multiplexed over a session (PROTOCOL.md 5).
//!
//! Writing: [`Stream::reserve`] hands out shared memory to write into directly (zero copy);
//! [`Reservation::commit`] publishes it with one queue element. `Write` copies into shared
//! memory and commits per call. When shared memory runs out, the bytes travel in a
//! FallbackData frame instead, and the stream stays on the socket from then on (so bytes
//! never overtake each other).
//!
//! Reading: [`Stream::read_view`] returns the next received piece as a zero-copy [`View`]
//! into shared memory, which returns its slice to the free list when dropped. `Read` copies.
//! Message boundaries are not preserved (a stream is a byte stream, like TCP); frame your
//! messages, for example with a length prefix.

use std::collections::VecDeque;
use std::io;
use std::ops::Deref;

use bytes::{Buf, BufMut, Bytes};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shmlink_core::buffer::{BufferError, Segment};
use shmlink_core::frame::{Frame, Message};
use shmlink_core::queue::Element;
use shmlink_core::session::{Piece, ReceiveBuffer, Route};

use crate::Error;
use crate::error::CloseReason;
use crate::session::Inner;

#[derive(Default)]
struct RecvState {
    buffer: ReceiveBuffer,
    peer_closed: bool,
    session_closed: Option<CloseReason>,
    local_closed: bool,
}

/// The part of a stream the session's driver shares with the application.
pub(crate) struct StreamShared {
    id: u32,
    recv: Mutex<RecvState>,
    cv: Condvar,
}

fn lock(m: &Mutex<RecvState>) -> MutexGuard<'_, RecvState> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl StreamShared {
    pub(crate) fn new(id: u32) -> Self {
        Self {
            id,
            recv: Mutex::new(RecvState::default()),
            cv: Condvar::new(),
        }
    }

    /// Appends received bytes; a piece for a stream closed locally comes back to be recycled.
    pub(crate) fn push(&self, piece: Piece) -> Option<Piece> {
        let mut recv = lock(&self.recv);
        if recv.local_closed {
            return Some(piece);
        }
        recv.buffer.push(piece);
        drop(recv);
        self.cv.notify_all();
        None
    }

    pub(crate) fn peer_closed(&self) {
        lock(&self.recv).peer_closed = true;
        self.cv.notify_all();
    }

    pub(crate) fn session_closed(&self, reason: &CloseReason) {
        lock(&self.recv).session_closed = Some(reason.clone());
        self.cv.notify_all();
    }
}

/// One stream of a session. Dropping it closes it (the peer is told, as Go does).
pub struct Stream {
    inner: Arc<Inner>,
    shared: Arc<StreamShared>,
    read_timeout: Option<Duration>,
    write_timeout: Duration,
    closed: bool,
    /// Bytes taken out of the receive buffer (zero copy, as a `Bytes` owning its slice) and
    /// not consumed yet: every read looks here first.
    rest: Bytes,
    /// The slice list of the last reservation, kept for the next one.
    spare: Mutex<Vec<u32>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.shared.id)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(inner: Arc<Inner>, shared: Arc<StreamShared>) -> Self {
        let write_timeout = inner.write_timeout;
        Self {
            inner,
            shared,
            read_timeout: None,
            write_timeout,
            closed: false,
            rest: Bytes::new(),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// The stream id (the client's first stream is 2).
    pub fn id(&self) -> u32 {
        self.shared.id
    }

    /// Bounds every blocking read (`None`: wait for ever, until data, end or session close).
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Bounds how long a write waits for shared memory or queue room under
    /// [`Exhaustion::Wait`](crate::Exhaustion) (default: [`Config::write_timeout`](crate::Config)).
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.write_timeout = timeout;
    }

    /// The write deadline of a write starting now, under the Wait policy.
    fn write_deadline(&self) -> Option<Instant> {
        (self.inner.on_exhaustion == crate::Exhaustion::Wait)
            .then(|| Instant::now() + self.write_timeout)
    }

    /// Whether this stream now sends over the socket because shared memory ran out.
    pub fn is_fallback(&self) -> bool {
        matches!(
            self.inner.lock_state().core.route(self.id()),
            Ok(Route::Fallback)
        )
    }

    fn route(&self) -> Result<Route, Error> {
        let state = self.inner.live_state()?;
        state.core.route(self.id()).map_err(Error::from)
    }

    /// Reserves `n` bytes to write into directly. In shared memory when possible (one slice
    /// if `n` fits the largest slice size, else a chain), on the heap when shared memory is
    /// exhausted or the stream is in fallback; [`Reservation::commit`] publishes it either way.
    pub fn reserve(&self, n: usize) -> Result<Reservation<'_>, Error> {
        if self.closed {
            return Err(Error::StreamClosed);
        }
        let max = self.inner.max_frame_len;
        // A write may have to travel as one FallbackData frame: 16 bytes of header and ids.
        if n > max as usize - 16 {
            return Err(Error::TooLarge { len: n, max });
        }
        let kind = match self.route()? {
            Route::Fallback => Reserved::Heap(vec![0; n]),
            Route::Queue if n == 0 => Reserved::Heap(Vec::new()),
            Route::Queue => {
                let buffers = &self.inner.shm.buffers;
                // One allocation: enough room for the chain Go's policy builds for `n`.
                let max = u64::from(buffers.max_slice_size().max(1));
                let mut taken =
                    std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
                taken.reserve((n as u64 / max + 2).min(4096) as usize);
                // The slices as this process took them, kept in process memory: never read
                // back from links in shared memory, which the peer could rewrite.
                let deadline = self.write_deadline();
                let mut pause = Duration::from_micros(50);
                loop {
                    match buffers.alloc_into(n as u64, &mut taken) {
                        Ok(_) => break Reserved::Shm(taken),
                        Err(BufferError::NoMoreBuffer { .. }) => {
                            self.inner
                                .lock_state()
                                .core
                                .metrics_mut()
                                .alloc_shm_error_count += 1;
                            let exhausted = Error::SharedMemoryExhausted { requested: n };
                            match self.inner.on_exhaustion {
                                crate::Exhaustion::Fallback => break Reserved::Heap(vec![0; n]),
                                crate::Exhaustion::Error => return Err(exhausted),
                                // Waiting cannot help a write larger than all the memory.
                                crate::Exhaustion::Wait if n as u64 > usable(buffers) => {
                                    return Err(exhausted);
                                }
                                crate::Exhaustion::Wait => {}
                            }
                            if deadline.is_some_and(|d| Instant::now() >= d) {
                                return Err(Error::Timeout);
                            }
                            // The peer gives memory back as it reads: look again soon, then
                            // less often.
                            std::thread::sleep(pause);
                            pause = (pause * 2).min(Duration::from_millis(2));
                            self.route()?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        };
        Ok(Reservation {
            stream: self,
            len: n,
            kind,
            done: false,
            pos: 0,
        })
    }

    /// Writes `data` as one flush (copied once, into shared memory).
    pub fn send(&self, data: &[u8]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let mut r = self.reserve(data.len())?;
        r.write_at(0, data);
        r.commit(data.len())
    }

    /// The next received piece, zero copy, or `None` at the end of the stream (the peer
    /// closed it and everything before the close has been read).
    pub fn read_view(&mut self) -> Result<Option<View>, Error> {
        if !self.rest.is_empty() {
            return Ok(Some(View {
                inner: Arc::clone(&self.inner),
                kind: ViewKind::Bytes(std::mem::take(&mut self.rest)),
            }));
        }
        let mut recv = match self.wait_readable()? {
            Some(recv) => recv,
            None => return Ok(None),
        };
        let (piece, offset) = recv.buffer.pop_front().ok_or(Error::StreamClosed)?;
        drop(recv);
        let kind = match piece {
            Piece::Shm(segment) => ViewKind::Shm {
                segment,
                start: offset as u32,
            },
            Piece::Heap(bytes) => ViewKind::Heap(bytes, offset),
        };
        Ok(Some(View {
            inner: Arc::clone(&self.inner),
            kind,
        }))
    }

    fn read_deadline(&self) -> Option<Instant> {
        self.read_timeout.map(|t| Instant::now() + t)
    }

    /// Waits for data, bounded by the read timeout; `None` means end of stream.
    fn wait_readable(&self) -> Result<Option<MutexGuard<'_, RecvState>>, Error> {
        self.wait_readable_until(self.read_deadline())
    }

    /// Waits for data until `deadline` (`None`: for ever); `None` means end of stream.
    fn wait_readable_until(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Option<MutexGuard<'_, RecvState>>, Error> {
        let mut recv = lock(&self.shared.recv);
        loop {
            if recv.local_closed {
                return Err(Error::StreamClosed);
            }
            if !recv.buffer.is_empty() {
                return Ok(Some(recv));
            }
            if recv.peer_closed {
                return Ok(None);
            }
            if let Some(reason) = &recv.session_closed {
                return Err(reason.error());
            }
            recv = match deadline {
                None => self.shared.cv.wait(recv).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout);
                    }
                    self.shared
                        .cv
                        .wait_timeout(recv, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// Bytes received and not yet read.
    pub fn available(&self) -> usize {
        let recv = lock(&self.shared.recv);
        self.rest.len() + recv.buffer.len()
    }

    /// Reads exactly `n` bytes as [`Bytes`], waiting for them (bounded by the read timeout).
    ///
    /// No copy when the `n` bytes lie in one received slice: the `Bytes` then points into
    /// shared memory, and the slice returns to its free list when the last `Bytes` (or other
    /// reader) that uses it is dropped. Bytes spanning slices are copied once into a fresh
    /// buffer. `Ok(None)` at the end of the stream; if the stream ends after fewer than `n`
    /// bytes, [`Error::StreamEnded`] and the bytes stay readable.
    ///
    /// Not cancellation-relevant (blocking); on a timeout nothing is consumed.
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
        if !self.fill_contiguous(n)? {
            return Ok(None);
        }
        let bytes = self.rest.split_to(n);
        self.release_empty_rest();
        Ok(Some(bytes))
    }

    /// An empty `rest` still holding its slice's owner would keep the slice from its free
    /// list; let it go.
    fn release_empty_rest(&mut self) {
        if self.rest.is_empty() {
            self.rest = Bytes::new();
        }
    }

    /// The next `n` bytes without consuming them (zero copy when they lie in one slice, as
    /// [`read_bytes`](Self::read_bytes)); `Ok(None)` at the end of the stream.
    pub fn peek(&mut self, n: usize) -> Result<Option<Bytes>, Error> {
        if !self.fill_contiguous(n)? {
            return Ok(None);
        }
        Ok(Some(self.rest.slice(..n)))
    }

    /// Up to `n` received bytes as a chain of zero-copy pieces, one per slice, implementing
    /// [`bytes::Buf`]; waits for at least one byte. `Ok(None)` at the end of the stream.
    pub fn read_buf(&mut self, n: usize) -> Result<Option<Pieces>, Error> {
        let mut pieces = Pieces::default();
        while pieces.remaining() < n {
            if self.rest.is_empty() {
                // Wait (bounded by the read timeout) only for the first byte.
                let wait = (pieces.remaining() == 0).then(|| self.read_deadline());
                match self.next_piece(wait)? {
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

    /// The next non-empty received piece as `Bytes` (zero copy), waiting until `deadline` if
    /// given. `None`: nothing to take (end of stream, or nothing buffered and not waiting).
    fn next_piece(&mut self, deadline: Option<Option<Instant>>) -> Result<Option<Bytes>, Error> {
        loop {
            let piece = match deadline {
                Some(deadline) => match self.wait_readable_until(deadline)? {
                    Some(mut recv) => recv.buffer.pop_front(),
                    None => None,
                },
                None => lock(&self.shared.recv).buffer.pop_front(),
            };
            let Some((piece, offset)) = piece else {
                return Ok(None);
            };
            let bytes = match piece {
                Piece::Shm(segment) => Bytes::from_owner(View {
                    inner: Arc::clone(&self.inner),
                    kind: ViewKind::Shm {
                        segment,
                        start: offset as u32,
                    },
                }),
                Piece::Heap(vec) => Bytes::from(vec).slice(offset..),
            };
            // An empty piece (a peer may send an empty fallback frame) is no data: skip it,
            // so a `Buf` never shows an empty chunk with bytes remaining.
            if !bytes.is_empty() {
                return Ok(Some(bytes));
            }
        }
    }

    /// Makes `rest` hold at least `n` contiguous bytes: zero copy when the first piece holds
    /// them, else one copy of exactly the pieces needed. The read timeout bounds the whole
    /// call. `Ok(false)` at the end of the stream with nothing read.
    fn fill_contiguous(&mut self, n: usize) -> Result<bool, Error> {
        if self.rest.len() >= n {
            return Ok(true);
        }
        let deadline = self.read_timeout.map(|t| Instant::now() + t);
        let mut parts: Vec<Bytes> = Vec::new();
        let mut have = self.rest.len();
        let outcome = loop {
            if have >= n {
                break Ok(true);
            }
            match self.next_piece(Some(deadline)) {
                Ok(Some(piece)) => {
                    have += piece.len();
                    parts.push(piece);
                }
                Ok(None) if have == 0 => break Ok(false),
                Ok(None) => break Err(Error::StreamEnded),
                Err(e) => break Err(e),
            }
        };
        // Whatever happened, nothing taken is lost: it all goes back into `rest`, copied once.
        if !parts.is_empty() {
            if self.rest.is_empty() && parts.len() == 1 {
                self.rest = parts.pop().unwrap_or_default();
            } else {
                let mut joined = bytes::BytesMut::with_capacity(have);
                joined.extend_from_slice(&self.rest);
                for part in &parts {
                    joined.extend_from_slice(part);
                }
                self.rest = joined.freeze();
            }
        }
        outcome
    }

    /// Closes the stream: unread data is recycled and the peer is told (a close element, or
    /// a StreamClose frame when the queue is full). Idempotent.
    pub fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        {
            let mut recv = lock(&self.shared.recv);
            recv.local_closed = true;
            // Recycling is lock-free; doing it under the stream lock is fine.
            recv.buffer.drain(|segment| self.inner.recycle(segment));
        }
        self.inner.close_stream(self.id());
    }

    fn publish(&self, slices: &[u32], written: usize) -> Result<(), Error> {
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
            // Nothing was announced: every slice is still ours to recycle.
            for &slice in slices {
                let _ = buffers.recycle(slice);
            }
            return Err(e.into());
        }
        for &slice in &slices[used..] {
            let _ = buffers.recycle(slice);
        }
        match self
            .inner
            .push_element(Element::data(self.id(), slices[0]), self.write_deadline())
        {
            Ok(Ok(())) => {}
            // Pushed, but the wake-up failed and the session is closing: the slices are the
            // peer's now, whatever it does with them.
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                // Nothing reached the peer: the slices are still ours to recycle.
                for &slice in &slices[..used] {
                    if buffers.take_back(slice).is_ok() {
                        let _ = buffers.recycle(slice);
                    }
                }
                return Err(e);
            }
        }
        self.inner.lock_state().core.sent_queue(written as u64);
        Ok(())
    }

    fn send_fallback(&self, data: &[u8]) -> Result<(), Error> {
        let version = self.inner.lock_state().core.version();
        let frame = Frame::new(
            version,
            Message::FallbackData {
                stream_id: self.id(),
                status: 0,
                data,
            },
        );
        self.inner.send_frame(&frame)?;
        let now = self.inner.now_ms();
        self.inner
            .lock_state()
            .core
            .sent_fallback(self.id(), data.len() as u64, now);
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.close();
    }
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.rest.is_empty() {
            let n = self.rest.len().min(buf.len());
            buf[..n].copy_from_slice(&self.rest[..n]);
            self.rest.advance(n);
            self.release_empty_rest();
            return Ok(n);
        }
        let Some(mut recv) = self.wait_readable()? else {
            return Ok(0);
        };
        let shm = &self.inner.shm;
        Ok(recv.buffer.read(
            buf,
            |segment| shm.bytes(segment.data, segment.len),
            |segment| self.inner.recycle(segment),
        ))
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

enum Reserved {
    /// Slices of shared memory, as allocated (absolute offsets, chain order).
    Shm(Vec<u32>),
    Heap(Vec<u8>),
}

/// Space reserved on a stream, written in place and published by [`commit`](Self::commit).
/// Dropping it unpublished returns its slices.
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
pub struct Reservation<'s> {
    stream: &'s Stream,
    len: usize,
    kind: Reserved,
    done: bool,
    /// Where `BufMut` and `io::Write` write next.
    pos: usize,
}

impl std::fmt::Debug for Reservation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("len", &self.len)
            .field("shared_memory", &self.is_shared_memory())
            .finish()
    }
}

impl Reservation<'_> {
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
                let mut out = Vec::with_capacity(slices.len());
                out.extend(
                    pieces(&self.stream.inner.shm.buffers, slices, self.len)
                        // SAFETY: each slice was allocated by us for this reservation and is
                        // neither published nor recycled while `self` is mutably borrowed;
                        // the pieces are disjoint slices.
                        .map(|s| unsafe { self.stream.inner.shm.bytes_mut(s.data, s.len) }),
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
        for piece in self.chunks_mut() {
            if data.is_empty() {
                break;
            }
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            let n = (piece.len() - skip).min(data.len());
            piece[skip..skip + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            skip = 0;
        }
    }

    /// Bytes written so far through [`BufMut`] or [`io::Write`] (the write cursor).
    pub fn written(&self) -> usize {
        self.pos
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

    /// The writable piece holding byte `pos` of the reservation, from `pos` on.
    fn piece_at(&mut self, pos: usize) -> &mut [u8] {
        match &mut self.kind {
            Reserved::Heap(v) => &mut v[pos..],
            Reserved::Shm(slices) => {
                let shm = &self.stream.inner.shm;
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

    /// Publishes the first `written` bytes (one queue element, or one fallback frame) and
    /// returns any unused slices.
    pub fn commit(mut self, written: usize) -> Result<(), Error> {
        self.done = true;
        let written = written.min(self.len);
        let stream = self.stream;
        let kind = &self.kind;
        if written == 0 {
            release(stream, kind);
            return Ok(());
        }
        let route = match stream.route() {
            Ok(route) => route,
            Err(e) => {
                release(stream, kind);
                return Err(e);
            }
        };
        match (route, kind) {
            (Route::Queue, Reserved::Shm(slices)) => stream.publish(slices, written),
            (Route::Fallback, Reserved::Shm(slices)) => {
                let mut bytes = Vec::with_capacity(written);
                for s in pieces(&stream.inner.shm.buffers, slices, written) {
                    bytes.extend_from_slice(stream.inner.shm.bytes(s.data, s.len));
                }
                release(stream, kind);
                stream.send_fallback(&bytes)
            }
            (_, Reserved::Heap(bytes)) => stream.send_fallback(&bytes[..written]),
        }
        // Drop gives the slice list back to the stream for the next reservation.
    }
}

// SAFETY: `chunk_mut` hands out the writable bytes of the reservation from the cursor on
// (memory this reservation owns: its slices or its heap buffer), `remaining_mut` is exactly
// what is left of it, and `advance_mut` refuses to move the cursor past the end, so the cursor
// only ever covers bytes that were written through `chunk_mut`.
unsafe impl BufMut for Reservation<'_> {
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
impl io::Write for Reservation<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() && self.pos < self.len {
            let pos = self.pos;
            let piece = self.piece_at(pos);
            let n = piece.len().min(buf.len() - done);
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

/// Received bytes as a chain of pieces (one per slice, zero copy), from
/// [`Stream::read_buf`]; a [`bytes::Buf`]. Each slice returns to its free list when its piece
/// is consumed or the chain is dropped.
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

fn release(stream: &Stream, kind: &Reserved) {
    if let Reserved::Shm(slices) = kind {
        for &slice in slices {
            let _ = stream.inner.shm.buffers.recycle(slice);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            release(self.stream, &self.kind);
        }
        // The list of slices is the stream's to reuse: no allocation per message.
        if let Reserved::Shm(slices) = &mut self.kind {
            let mut slices = std::mem::take(slices);
            slices.clear();
            *self.stream.spare.lock().unwrap_or_else(|e| e.into_inner()) = slices;
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
