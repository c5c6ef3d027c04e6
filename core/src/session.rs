//! The session state machine (PROTOCOL.md 5): stream ids, implicit open, what each queue
//! element and control frame means, how data leaves (queue or fallback frame), how a stream
//! closes, the circuit breaker, and Go's metrics. Sans-IO: time comes in as milliseconds,
//! deliveries go out through a callback, and the caller performs every write.
//!
//! A received chain is walked once by [`BufferManager::receive_chain`], which checks every
//! link and records each slice as ours in the process-local ownership ledger; exactly the
//! segments validated are delivered, so a hostile element yields an error and nothing
//! half-delivered, and a slice never gets two owners.
//!
//! A stream closed locally keeps its id (PROTOCOL.md 5.2) until the peer's close arrives, so
//! data the peer queued before it saw our close is recycled instead of opening a new stream.
//!
//! ```
//! use shmlink_core::queue::Side;
//! use shmlink_core::session::{Route, Session};
//!
//! let mut client = Session::new(Side::Client, 3, 30_000);
//! let id = client.open_stream(0).unwrap();
//! assert_eq!(id, 2); // the client's first stream id, as in Go
//! assert_eq!(client.route(id).unwrap(), Route::Queue);
//! // After a fallback write the stream stays on the socket, and the session is unhealthy.
//! client.sent_fallback(id, 5, 1_000);
//! assert_eq!(client.route(id).unwrap(), Route::Fallback);
//! assert!(!client.is_healthy(2_000));
//! assert!(client.is_healthy(31_000));
//! ```

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::fmt;

use crate::buffer::{BufferError, BufferManager, Segment};
use crate::frame::{Frame, Message, MessageType};
use crate::queue::{Element, STATUS_CLOSED, STATUS_OPENED, Side};

/// Go's `PerformanceMetrics` (PROTOCOL.md 8.1), with Go's names in snake case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerformanceMetrics {
    /// Polling frames received.
    pub receive_sync_event_count: u64,
    /// Polling frames sent (successful 0->1 flag CASes).
    pub send_sync_event_count: u64,
    /// Bytes passed to flush.
    pub out_flow_bytes: u64,
    /// Bytes delivered to streams.
    pub in_flow_bytes: u64,
    /// The send queue's tail: elements ever enqueued. The state machine counts data
    /// elements; a runtime with access to the queue reports the tail itself, as Go does.
    pub send_queue_count: u64,
    /// The receive queue's tail: elements ever enqueued by the peer (the state machine
    /// counts the elements it was fed).
    pub receive_queue_count: u64,
}

/// Go's `StabilityMetrics` (PROTOCOL.md 8.2), with Go's names in snake case.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StabilityMetrics {
    /// Writes that could not get shared memory and fell back.
    pub alloc_shm_error_count: u64,
    /// Fallback frames sent.
    pub fallback_write_count: u64,
    /// Fallback frames received.
    pub fallback_read_count: u64,
    /// Socket or protocol errors that ended the session.
    pub event_conn_error_count: u64,
    /// Writes refused because the queue stayed full.
    pub queue_full_error_count: u64,
    /// Streams in the session's table.
    pub active_stream_count: u64,
    /// Hot restarts completed (kept for Go's metric set; hot restart is not implemented).
    pub hot_restart_success_count: u64,
    /// Hot restarts failed (kept for Go's metric set).
    pub hot_restart_error_count: u64,
    /// Slices the buffer manager refused to take back because they were already free (a
    /// slice recycled twice, by us or because the peer named it twice). Not one of Go's
    /// metrics; zero in a healthy session.
    pub refused_recycle_count: u64,
}

/// Go's `ShareMemoryMetrics` (PROTOCOL.md 8.3): the buffer region's size and the bytes of
/// it in use, summed over the size classes. The state machine does not see the region; a
/// runtime fills these in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShareMemoryMetrics {
    /// Every slice of every size class, in bytes.
    pub capacity_of_share_memory_in_bytes: u64,
    /// Slices taken out of their free lists, in bytes (0 when every slice is free).
    pub all_in_used_share_memory_in_bytes: u64,
}

/// Go's three metric sets for one session (`Session.GetMetrics()`, PROTOCOL.md 8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Throughput counters.
    pub performance: PerformanceMetrics,
    /// Error and fallback counters.
    pub stability: StabilityMetrics,
    /// Shared-memory usage.
    pub share_memory: ShareMemoryMetrics,
}

impl Metrics {
    /// Adds `other` field by field (a manager's total over its sessions).
    pub fn add(&mut self, other: &Metrics) {
        let (p, q) = (&mut self.performance, &other.performance);
        p.receive_sync_event_count += q.receive_sync_event_count;
        p.send_sync_event_count += q.send_sync_event_count;
        p.out_flow_bytes += q.out_flow_bytes;
        p.in_flow_bytes += q.in_flow_bytes;
        p.send_queue_count += q.send_queue_count;
        p.receive_queue_count += q.receive_queue_count;
        let (s, t) = (&mut self.stability, &other.stability);
        s.alloc_shm_error_count += t.alloc_shm_error_count;
        s.fallback_write_count += t.fallback_write_count;
        s.fallback_read_count += t.fallback_read_count;
        s.event_conn_error_count += t.event_conn_error_count;
        s.queue_full_error_count += t.queue_full_error_count;
        s.active_stream_count += t.active_stream_count;
        s.hot_restart_success_count += t.hot_restart_success_count;
        s.hot_restart_error_count += t.hot_restart_error_count;
        s.refused_recycle_count += t.refused_recycle_count;
        let (m, n) = (&mut self.share_memory, &other.share_memory);
        m.capacity_of_share_memory_in_bytes += n.capacity_of_share_memory_in_bytes;
        m.all_in_used_share_memory_in_bytes += n.all_in_used_share_memory_in_bytes;
    }
}

/// A stream's state (Go's values: 0 opened, 1 closed, 2 half-closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// Both directions open.
    Opened,
    /// The peer closed it; buffered data may still be read, writes fail.
    HalfClosed,
}

/// Which channel a flush must take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Shared memory and the IO queue.
    Queue,
    /// A FallbackData frame on the socket (sticky once taken, to keep bytes in order).
    Fallback,
}

/// What the caller must send to close a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseAction {
    /// Push this close element (or, if the queue is full, send a StreamClose frame).
    SendClose(Element),
    /// Nothing goes on the wire (the peer closed first, or the stream is unknown).
    Nothing,
}

/// Something the session hands to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery<'f> {
    /// The peer opened a stream (server side, implicit open); data for it follows.
    Opened(u32),
    /// Bytes in shared memory for a stream: the slice is the receiver's to recycle.
    Shm {
        /// The stream.
        stream_id: u32,
        /// The slice and its valid bytes.
        segment: Segment,
    },
    /// Bytes that came in a FallbackData frame (borrowed from the frame).
    Fallback {
        /// The stream.
        stream_id: u32,
        /// The bytes.
        data: &'f [u8],
    },
    /// The peer closed the stream: readers drain what is buffered, then see the end.
    Closed(u32),
    /// A slice the session received but nobody wants (unknown or closed stream, empty
    /// slice): recycle it now.
    Recycle(u32),
    /// The peer asked for a hot restart (not implemented; informational).
    HotRestart {
        /// The epoch.
        epoch: u64,
    },
}

/// Errors of the session state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer sent a message type that has no meaning after the handshake (Go:
    /// ErrInvalidMsgType); the session must close.
    InvalidMessage {
        /// The type received.
        kind: MessageType,
    },
    /// A queue element pointed at an invalid chain; the session must close.
    BadChain(BufferError),
    /// Every stream id is in use.
    StreamsExhausted,
    /// The circuit breaker is open after a fallback; retry in `retry_in_ms` milliseconds.
    Unhealthy {
        /// Milliseconds until the breaker closes again.
        retry_in_ms: u64,
    },
    /// The stream is not open for writing.
    StreamClosed,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidMessage { kind } => write!(f, "peer sent {kind:?} after the handshake"),
            Self::BadChain(e) => write!(f, "peer sent an invalid buffer chain: {e}"),
            Self::StreamsExhausted => write!(f, "all stream ids are in use"),
            Self::Unhealthy { retry_in_ms } => write!(
                f,
                "session is unhealthy after a fallback; retry in {retry_in_ms} ms"
            ),
            Self::StreamClosed => write!(f, "stream is closed"),
        }
    }
}

impl core::error::Error for SessionError {}

#[derive(Clone, Copy, Debug)]
struct Entry {
    state: StreamState,
    fallback: bool,
}

/// How many locally closed ids a session remembers while waiting for the peer's close.
///
/// A Go peer never answers a close with one of its own (closing from half-closed sends
/// nothing), so an id we closed first is kept until the peer closes it too or until this many
/// later closes have pushed it out (a few hundred KiB at most). Data the peer queued before it
/// saw our close sits in the queue (8,192 elements by default) or in fallback frames already
/// on the socket; an id pushed out only after twice a default queue of later closes can still,
/// in principle, see late fallback data open a new stream. That residue is the price of a
/// bounded table.
pub const CLOSED_IDS_REMEMBERED: usize = 16_384;

/// One session's bookkeeping.
#[derive(Debug)]
pub struct Session {
    side: Side,
    version: u8,
    last_id: u32,
    streams: BTreeMap<u32, Entry>,
    /// Ids closed locally whose close the peer has not answered (see
    /// [`CLOSED_IDS_REMEMBERED`]), with their order of closing.
    closed: BTreeSet<u32>,
    closed_order: VecDeque<u32>,
    breaker_ms: u64,
    unhealthy_until_ms: Option<u64>,
    metrics: Metrics,
    /// Scratch for received chains, reused so no element allocates in steady state.
    segments: Vec<Segment>,
}

impl Session {
    /// A session for `side` speaking protocol `version`; a fallback makes it unhealthy for
    /// `breaker_ms` milliseconds (0 disables the breaker).
    pub fn new(side: Side, version: u8, breaker_ms: u64) -> Self {
        Self {
            side,
            version,
            // Go: the client's counter starts at 1, the server's at 2; ids are taken after
            // incrementing, so the client's first stream is 2.
            last_id: match side {
                Side::Client => 1,
                Side::Server => 2,
            },
            streams: BTreeMap::new(),
            closed: BTreeSet::new(),
            closed_order: VecDeque::new(),
            breaker_ms,
            unhealthy_until_ms: None,
            metrics: Metrics::default(),
            segments: Vec::new(),
        }
    }

    /// Whether `id` was closed locally and the peer has not closed it yet (its data is
    /// recycled, never delivered).
    pub fn is_closed_locally(&self, id: u32) -> bool {
        self.closed.contains(&id)
    }

    fn remember_closed(&mut self, id: u32) {
        if self.closed.insert(id) {
            self.closed_order.push_back(id);
        }
        while self.closed_order.len() > CLOSED_IDS_REMEMBERED {
            if let Some(old) = self.closed_order.pop_front() {
                self.closed.remove(&old);
            }
        }
    }

    fn forget_closed(&mut self, id: u32) {
        if self.closed.remove(&id) {
            self.closed_order.retain(|&c| c != id);
        }
    }

    /// The negotiated protocol version (the version byte of every frame we send).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The counters, with `active_stream_count` filled in.
    pub fn metrics(&self) -> Metrics {
        let mut m = self.metrics;
        m.stability.active_stream_count = self.streams.len() as u64;
        m
    }

    /// Mutable counters, for what the caller observes itself (queue counts, errors).
    pub fn metrics_mut(&mut self) -> &mut Metrics {
        &mut self.metrics
    }

    /// Milliseconds until the circuit breaker closes again at `now_ms` (0: it is closed).
    pub fn unhealthy_for_ms(&self, now_ms: u64) -> u64 {
        self.unhealthy_until_ms
            .map_or(0, |until| until.saturating_sub(now_ms))
    }

    /// Whether the circuit breaker is closed at `now_ms`.
    pub fn is_healthy(&self, now_ms: u64) -> bool {
        self.unhealthy_until_ms.is_none_or(|until| now_ms >= until)
    }

    fn trip_breaker(&mut self, now_ms: u64) {
        if self.breaker_ms > 0 {
            self.unhealthy_until_ms = Some(now_ms.saturating_add(self.breaker_ms));
        }
    }

    /// A stream's state, if it is in the table.
    pub fn stream_state(&self, id: u32) -> Option<StreamState> {
        self.streams.get(&id).map(|e| e.state)
    }

    /// Opens a stream (nothing goes on the wire: the peer learns of it from the first data).
    pub fn open_stream(&mut self, now_ms: u64) -> Result<u32, SessionError> {
        if !self.is_healthy(now_ms) {
            let until = self.unhealthy_until_ms.unwrap_or(now_ms);
            return Err(SessionError::Unhealthy {
                retry_in_ms: until.saturating_sub(now_ms),
            });
        }
        for _ in 0..=self.streams.len() {
            self.last_id = self.last_id.wrapping_add(1);
            if self.last_id == 0 {
                continue;
            }
            if !self.streams.contains_key(&self.last_id) && !self.closed.contains(&self.last_id) {
                self.streams.insert(
                    self.last_id,
                    Entry {
                        state: StreamState::Opened,
                        fallback: false,
                    },
                );
                return Ok(self.last_id);
            }
        }
        Err(SessionError::StreamsExhausted)
    }

    /// How the next flush on `id` must travel.
    pub fn route(&self, id: u32) -> Result<Route, SessionError> {
        match self.streams.get(&id) {
            Some(Entry {
                state: StreamState::Opened,
                fallback: false,
            }) => Ok(Route::Queue),
            Some(Entry {
                state: StreamState::Opened,
                fallback: true,
            }) => Ok(Route::Fallback),
            _ => Err(SessionError::StreamClosed),
        }
    }

    /// Records `bytes` flushed through the queue.
    pub fn sent_queue(&mut self, bytes: u64) {
        self.metrics.performance.out_flow_bytes += bytes;
        self.metrics.performance.send_queue_count += 1;
    }

    /// Records a Polling frame sent.
    pub fn sent_polling(&mut self) {
        self.metrics.performance.send_sync_event_count += 1;
    }

    /// Records a fallback frame of `bytes` on `id`: the stream stays on the socket from now on
    /// and the breaker opens.
    pub fn sent_fallback(&mut self, id: u32, bytes: u64, now_ms: u64) {
        self.sent_fallback_data(id, bytes, now_ms, true);
    }

    /// [`sent_fallback`](Self::sent_fallback), tripping the circuit breaker only if
    /// `exhausted`: a write larger than all shared memory could never fit, so its fallback is
    /// no sign that memory ran out and must not refuse new streams.
    pub fn sent_fallback_data(&mut self, id: u32, bytes: u64, now_ms: u64, exhausted: bool) {
        if let Some(e) = self.streams.get_mut(&id) {
            e.fallback = true;
        }
        self.metrics.performance.out_flow_bytes += bytes;
        self.metrics.stability.fallback_write_count += 1;
        if exhausted {
            self.trip_breaker(now_ms);
        }
    }

    /// Closes `id` locally and says what to send. A stream the peer already closed closes
    /// silently (Go sends nothing from half-closed). A stream still open on the peer's side
    /// keeps its id until the peer's close arrives: its data is recycled meanwhile, and
    /// neither side can reopen the id.
    pub fn close_stream(&mut self, id: u32) -> CloseAction {
        match self.streams.remove(&id) {
            Some(Entry {
                state: StreamState::Opened,
                ..
            }) => {
                self.remember_closed(id);
                CloseAction::SendClose(Element::close(id))
            }
            _ => CloseAction::Nothing,
        }
    }

    /// Forgets every stream (the session is shutting down; nothing is sent).
    pub fn clear(&mut self) {
        self.streams.clear();
        self.closed.clear();
        self.closed_order.clear();
    }

    /// Interprets one element popped from the receive queue.
    pub fn on_element<'f>(
        &mut self,
        element: Element,
        buffers: &BufferManager<'_>,
        deliver: &mut impl FnMut(Delivery<'f>),
    ) -> Result<(), SessionError> {
        self.metrics.performance.receive_queue_count += 1;
        match element.state() {
            STATUS_OPENED => {
                // One walk: validate every link and take ownership of every slice; deliver
                // exactly those segments, never re-reading the peer-writable headers.
                let mut segments = core::mem::take(&mut self.segments);
                let taken = buffers.receive_chain(element.offset, &mut segments);
                if let Err(e) = taken {
                    self.segments = segments;
                    return Err(SessionError::BadChain(e));
                }
                let wanted = self.accept_data(element.stream_id, deliver);
                for &segment in &segments {
                    if wanted && segment.len > 0 {
                        self.metrics.performance.in_flow_bytes += u64::from(segment.len);
                        deliver(Delivery::Shm {
                            stream_id: element.stream_id,
                            segment,
                        });
                    } else {
                        deliver(Delivery::Recycle(segment.slice));
                    }
                }
                segments.clear();
                self.segments = segments;
                Ok(())
            }
            STATUS_CLOSED => {
                self.peer_closed(element.stream_id, deliver);
                Ok(())
            }
            // Half-closed (2) is never sent; other values are not states. Go ignores them.
            _ => Ok(()),
        }
    }

    /// Whether data for `id` is wanted; opens it implicitly on the server.
    fn accept_data<'f>(&mut self, id: u32, deliver: &mut impl FnMut(Delivery<'f>)) -> bool {
        match self.streams.get(&id) {
            Some(Entry {
                state: StreamState::Opened,
                ..
            }) => true,
            // Data after the peer's own close: Go delivers to the pending list but nobody reads
            // a half-closed stream past its end; recycle.
            Some(Entry {
                state: StreamState::HalfClosed,
                ..
            }) => false,
            // Closed here, not yet by the peer: its data is recycled, not a new stream.
            None if self.closed.contains(&id) => false,
            None if self.side == Side::Server && id != 0 => {
                self.streams.insert(
                    id,
                    Entry {
                        state: StreamState::Opened,
                        fallback: false,
                    },
                );
                deliver(Delivery::Opened(id));
                true
            }
            None => false,
        }
    }

    fn peer_closed<'f>(&mut self, id: u32, deliver: &mut impl FnMut(Delivery<'f>)) {
        // Both sides have closed: the id is free again.
        self.forget_closed(id);
        if let Some(e) = self.streams.get_mut(&id) {
            if e.state == StreamState::Opened {
                e.state = StreamState::HalfClosed;
                deliver(Delivery::Closed(id));
            }
        }
    }

    /// Interprets one control frame received after the handshake. Polling only counts here:
    /// the caller drains the receive queue.
    pub fn on_frame<'f>(
        &mut self,
        frame: &Frame<'f>,
        now_ms: u64,
        deliver: &mut impl FnMut(Delivery<'f>),
    ) -> Result<(), SessionError> {
        match frame.message {
            Message::Polling => {
                self.metrics.performance.receive_sync_event_count += 1;
                Ok(())
            }
            Message::StreamClose { stream_id } => {
                self.peer_closed(stream_id, deliver);
                Ok(())
            }
            Message::FallbackData {
                stream_id,
                status,
                data,
            } => {
                self.metrics.stability.fallback_read_count += 1;
                self.trip_breaker(now_ms);
                if (status & 0xff) as u8 != STATUS_OPENED {
                    return Ok(());
                }
                if self.accept_data(stream_id, deliver) {
                    // Go: the receiving stream switches to fallback too, so replies stay in
                    // order with what the peer sent.
                    if let Some(e) = self.streams.get_mut(&stream_id) {
                        e.fallback = true;
                    }
                    self.metrics.performance.in_flow_bytes += data.len() as u64;
                    deliver(Delivery::Fallback { stream_id, data });
                }
                Ok(())
            }
            Message::HotRestart { epoch } => {
                deliver(Delivery::HotRestart { epoch });
                Ok(())
            }
            Message::HotRestartAck { .. } => Ok(()),
            other => Err(SessionError::InvalidMessage { kind: other.kind() }),
        }
    }
}

/// One received piece of a stream, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes in shared memory; the slice goes back to its free list once consumed.
    Shm(Segment),
    /// Bytes that arrived in a FallbackData frame.
    Heap(alloc::vec::Vec<u8>),
}

impl Piece {
    /// Bytes in the piece.
    pub fn len(&self) -> usize {
        match self {
            Piece::Shm(s) => s.len as usize,
            Piece::Heap(v) => v.len(),
        }
    }

    /// Whether the piece holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream's receive side as a byte stream (PROTOCOL.md 5.3): pieces queue up in order and
/// are read across their boundaries; message boundaries are not kept. The caller supplies the
/// bytes of shared-memory pieces and recycles each consumed slice, so this type never touches
/// memory itself. Every slice is handed to `recycle` exactly once: when fully read, when popped
/// as a whole, or when the buffer is drained.
///
/// ```
/// use shmlink_core::session::{Piece, ReceiveBuffer};
///
/// let mut rb = ReceiveBuffer::default();
/// rb.push(Piece::Heap(b"hel".to_vec()));
/// rb.push(Piece::Heap(b"lo".to_vec()));
/// let mut out = [0u8; 4];
/// let n = rb.read(&mut out, |_| &[], |_| {});
/// assert_eq!(&out[..n], b"hell");
/// assert_eq!(rb.len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct ReceiveBuffer {
    pieces: alloc::collections::VecDeque<Piece>,
    /// Bytes of the front piece already read.
    front_offset: usize,
    len: usize,
}

impl ReceiveBuffer {
    /// Appends a piece.
    pub fn push(&mut self, piece: Piece) {
        self.len += piece.len();
        self.pieces.push_back(piece);
    }

    /// Unread bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is left to read.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Copies up to `out.len()` bytes, in order, across pieces. `bytes` gives the bytes of a
    /// shared-memory segment; `recycle` receives each segment once it is fully read.
    pub fn read<'m>(
        &mut self,
        out: &mut [u8],
        bytes: impl Fn(&Segment) -> &'m [u8],
        mut recycle: impl FnMut(Segment),
    ) -> usize {
        let mut copied = 0;
        while copied < out.len() {
            let Some(front) = self.pieces.front() else {
                break;
            };
            let all: &[u8] = match front {
                Piece::Shm(s) => bytes(s),
                Piece::Heap(v) => v,
            };
            let rest = all.get(self.front_offset..).unwrap_or_default();
            let n = rest.len().min(out.len() - copied);
            out[copied..copied + n].copy_from_slice(&rest[..n]);
            copied += n;
            self.len -= n;
            if n == rest.len() {
                self.front_offset = 0;
                if let Some(Piece::Shm(segment)) = self.pieces.pop_front() {
                    recycle(segment);
                }
            } else {
                self.front_offset += n;
            }
        }
        copied
    }

    /// Takes the front piece whole (for zero-copy views), with the offset already read from
    /// it; the caller owns (and eventually recycles) its slice.
    pub fn pop_front(&mut self) -> Option<(Piece, usize)> {
        let piece = self.pieces.pop_front()?;
        let offset = core::mem::take(&mut self.front_offset);
        self.len -= piece.len() - offset;
        Some((piece, offset))
    }

    /// Removes everything unread, handing every shared-memory slice to `recycle`.
    pub fn drain(&mut self, mut recycle: impl FnMut(Segment)) {
        for piece in self.pieces.drain(..) {
            if let Piece::Shm(segment) = piece {
                recycle(segment);
            }
        }
        self.front_offset = 0;
        self.len = 0;
    }
}
