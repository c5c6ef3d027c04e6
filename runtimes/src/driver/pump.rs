//! What the pump's owner does: take everything the receive queue holds, read the socket
//! within a budget, decode control frames, and route deliveries to streams: one lock per run
//! of pieces for the same stream, wakers collected and called only once every lock is
//! released. Everything here runs under the `machine` lock, held only while pumping.
//!
//! Ordering: a stream close that comes through the queue is applied only once the socket has
//! been read dry after it. The peer writes a fallback message on the socket before it pushes
//! the close, and we drain the queue before we read the socket, so applying it at once would
//! let the close overtake the stream's last message.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use shmlink_core::frame::{Frame, FrameDecoder, Message};
use shmlink_core::queue::{Drain, QueueError};
use shmlink_core::session::{self as core_session, Delivery, Piece};

use super::waiting::PUMP_READS;
use super::{Inner, READ_CHUNK, State, StreamMap, lock};
use crate::error::CloseReason;
use crate::stream::StreamShared;

/// What only the task pumping the session touches.
pub(crate) struct Machine {
    decoder: FrameDecoder,
    buf: Vec<u8>,
    pub(super) sink: Sink,
}

/// Where deliveries go while the core session routes them.
#[derive(Default)]
pub(super) struct Sink {
    /// Wakers to call once the locks are released.
    pub(super) wakes: Vec<Waker>,
    /// Streams whose close came through the queue, not applied yet (see the module docs).
    closes: Vec<u32>,
    /// The run of pieces being delivered to one stream, handed over under one lock.
    run: Option<Arc<StreamShared>>,
    pieces: Vec<Piece>,
    /// A Polling frame came in the chunk being decoded: drain the queue once after it.
    polled: bool,
}

impl Machine {
    pub(super) fn new(max_frame_len: u32) -> Self {
        Self {
            decoder: {
                // Room for a whole read plus a partial frame: control frames never make it
                // allocate on the message path.
                let mut d = FrameDecoder::with_limit(max_frame_len);
                d.reserve(READ_CHUNK + 64);
                d
            },
            buf: vec![0; READ_CHUNK],
            sink: Sink::default(),
        }
    }
}

impl Inner {
    /// Takes in what the peer sent, without waiting (for `available`, the graceful close and
    /// the monitor): a no-op while another task pumps.
    pub(crate) fn pump_now(&self) {
        self.pump_some(usize::MAX);
    }

    /// [`pump_now`](Self::pump_now) with at most `reads` socket reads (the monitor: one
    /// session streaming at us must not hold its thread; the rest waits for the next look,
    /// the socket still readable). The working flag is left to the pump's owner if there is
    /// one; otherwise it goes down unless the session is hot and nobody waits.
    pub(crate) fn pump_some(&self, reads: usize) {
        let mut wakes = Vec::new();
        {
            let Ok(mut m) = self.machine.try_lock() else {
                return;
            };
            if self.is_closed() {
                return;
            }
            if let Err(reason) = self.pump(&mut m, reads) {
                drop(m);
                self.shutdown(reason);
                return;
            }
            std::mem::swap(&mut m.sink.wakes, &mut wakes);
        }
        for w in wakes {
            w.wake();
        }
        let (owner, no_reader) = {
            let reg = self.waiters.registry();
            (reg.owner().is_some(), !reg.has_reader(None))
        };
        let keep_up = owner || (no_reader && self.settings.hot());
        if !keep_up {
            self.lower_flag();
            self.watch_socket_if_vacant();
        }
    }

    /// Whether the receive queue holds elements or frames wait to be sent: work for a pump
    /// that the socket's readiness does not show.
    pub(crate) fn has_work_waiting(&self) -> bool {
        let queued = !lock(&self.shm.recv).queue().is_empty().unwrap_or(false);
        queued || !lock(&self.out).is_empty()
    }

    /// The session's socket, for the monitor's `poll(2)`.
    pub(crate) fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.conn.as_fd()
    }

    /// Lowers the receive queue's working flag, taking in what arrived meanwhile; after a
    /// few rounds against a producer faster than us the flag stays up and a waiter is woken
    /// to own the pump (or the monitor finds the session).
    pub(super) fn lower_flag(&self) {
        let mut wakes = Vec::new();
        let mut rounds = 0;
        loop {
            let drained = lock(&self.shm.recv).finish_drain();
            match drained {
                Ok(Drain::Idle) => break,
                Ok(Drain::Again) => {
                    rounds += 1;
                    let pumped = {
                        let mut m = lock(&self.machine);
                        let pumped = self.pump(&mut m, PUMP_READS);
                        wakes.append(&mut m.sink.wakes);
                        pumped
                    };
                    if let Err(reason) = pumped {
                        self.shutdown(reason);
                        break;
                    }
                    if rounds >= 4 {
                        let next = self.waiters.registry().wake_owner();
                        wakes.extend(next);
                        break;
                    }
                }
                Err(e) => {
                    self.shutdown(CloseReason::Violation(format!(
                        "receive queue corrupted: {e}"
                    )));
                    break;
                }
            }
        }
        for w in wakes {
            w.wake();
        }
    }

    /// Drains the receive queue, then reads the socket until it has nothing more or `reads`
    /// reads were made (none: the socket is not looked at). `Ok(true)`: the budget ran out
    /// with the socket maybe still holding bytes. An error ends the session (counted in Go's
    /// `event_conn_error_count` unless the peer just left).
    pub(super) fn pump(&self, m: &mut Machine, reads: usize) -> Result<bool, CloseReason> {
        let result = self.drain_queue(&mut m.sink).and_then(|()| {
            if reads == 0 {
                return Ok(true);
            }
            let more = self.pump_socket(m, reads)?;
            if !more {
                self.apply_closes(&mut m.sink);
            }
            Ok(more)
        });
        match result {
            Ok(more) => Ok(more && reads > 0),
            Err(reason) => {
                if !matches!(reason, CloseReason::Peer) {
                    lock(&self.state)
                        .core
                        .metrics_mut()
                        .stability
                        .event_conn_error_count += 1;
                }
                Err(reason)
            }
        }
    }

    /// `Ok(true)` when `reads` reads were made without finding the socket empty.
    fn pump_socket(&self, m: &mut Machine, reads: usize) -> Result<bool, CloseReason> {
        self.flush_out_now();
        let mut cx = Context::from_waker(&self.session_waker);
        for _ in 0..reads {
            match self.reactor.poll_recv(&mut cx, &mut m.buf) {
                Poll::Pending => return Ok(false),
                Poll::Ready(Ok(0)) => {
                    // Whatever the peer pushed or closed before it left is delivered first.
                    self.drain_queue(&mut m.sink)?;
                    self.apply_closes(&mut m.sink);
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
                    let Machine { decoder, buf, sink } = &mut *m;
                    decoder.extend(&buf[..n]);
                    loop {
                        let frame = match decoder.next_frame() {
                            Ok(Some(frame)) => frame,
                            Ok(None) => break,
                            Err(e) => {
                                return Err(CloseReason::Violation(format!("bad frame: {e}")));
                            }
                        };
                        self.handle_frame(&frame, sink)?;
                    }
                    if std::mem::take(&mut sink.polled) {
                        self.drain_queue(sink)?;
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
        Ok(true)
    }

    /// Handles one control frame from the peer.
    fn handle_frame(&self, frame: &Frame<'_>, sink: &mut Sink) -> Result<(), CloseReason> {
        if let Message::Polling = frame.message {
            // Many Polling frames in one read cost one drain (a flood of them cannot make
            // us drain per frame).
            sink.polled = true;
            return Ok(());
        }
        // The peer pushed everything it queued before it wrote this frame (a StreamClose
        // sent because the queue was full, fallback data, ...): while our flag is up it sends
        // no Polling, so drain first, or the frame would overtake those elements.
        self.drain_queue(sink)?;
        let now = self.now_ms();
        self.with_core(sink, false, |core, mut deliver| {
            core.on_frame(frame, now, &mut deliver)
        })
        .map_err(|e| CloseReason::Violation(e.to_string()))
    }

    /// Pops every element of the receive queue and routes it (one state lock per batch).
    fn drain_queue(&self, sink: &mut Sink) -> Result<(), CloseReason> {
        let corrupt =
            |e: QueueError| CloseReason::Violation(format!("receive queue corrupted: {e}"));
        let mut consumer = lock(&self.shm.recv);
        let Some(first) = consumer.pop().map_err(corrupt)? else {
            return Ok(());
        };
        self.with_core(sink, true, |core, mut deliver| {
            core.on_element(first, &self.shm.buffers, &mut deliver)
                .map_err(|e| CloseReason::Violation(e.to_string()))?;
            while let Some(element) = consumer.pop().map_err(corrupt)? {
                core.on_element(element, &self.shm.buffers, &mut deliver)
                    .map_err(|e| CloseReason::Violation(e.to_string()))?;
            }
            Ok(())
        })
    }

    /// Runs `f` on the core session with a sink that routes deliveries to streams; the last
    /// run of pieces is handed over before the state lock is released.
    fn with_core<R>(
        &self,
        sink: &mut Sink,
        from_queue: bool,
        f: impl FnOnce(&mut core_session::Session, &mut dyn FnMut(Delivery<'_>)) -> R,
    ) -> R {
        let mut state = lock(&self.state);
        let State {
            core,
            streams,
            accept,
            ..
        } = &mut *state;
        let mut opened = false;
        let result = f(core, &mut |d| {
            opened |= self.deliver(streams, accept, sink, from_queue, d)
        });
        self.end_run(sink);
        if opened {
            // Lock order: state, then registry (nothing holds the registry and takes state).
            self.waiters.registry().acceptors(&mut sink.wakes);
        }
        result
    }

    /// Routes one delivery; returns whether a stream was opened (to wake acceptors).
    fn deliver(
        &self,
        streams: &mut StreamMap,
        accept: &mut std::collections::VecDeque<Arc<StreamShared>>,
        sink: &mut Sink,
        from_queue: bool,
        delivery: Delivery<'_>,
    ) -> bool {
        let piece_for = |sink: &mut Sink, stream_id: u32| -> bool {
            // Part of the current run, or the start of a new one.
            if sink.run.as_ref().is_some_and(|s| s.id() == stream_id) {
                return true;
            }
            self.end_run(sink);
            match streams.get(&stream_id) {
                Some(s) => {
                    sink.run = Some(Arc::clone(s));
                    true
                }
                None => false,
            }
        };
        match delivery {
            Delivery::Opened(id) => {
                self.end_run(sink);
                let shared = Arc::new(StreamShared::new(id));
                streams.insert(id, Arc::clone(&shared));
                accept.push_back(shared);
                tracing::debug!(target: "shmlink::stream", session = self.id, stream = id, "stream opened by the peer");
                return true;
            }
            Delivery::Shm { stream_id, segment } => {
                if piece_for(sink, stream_id) {
                    sink.pieces.push(Piece::Shm(segment));
                } else {
                    self.recycle(segment);
                }
            }
            // An empty fallback frame carries no data; queuing it would read as a false end.
            Delivery::Fallback { data: [], .. } => {}
            Delivery::Fallback { stream_id, data } => {
                if piece_for(sink, stream_id) {
                    sink.pieces.push(Piece::Heap(data.to_vec()));
                }
            }
            Delivery::Closed(id) => {
                self.end_run(sink);
                if from_queue {
                    sink.closes.push(id);
                } else if let Some(s) = streams.get(&id) {
                    tracing::debug!(target: "shmlink::stream", session = self.id, stream = id, "stream closed by the peer");
                    sink.wakes.extend(s.peer_closed());
                }
            }
            Delivery::Recycle(slice) => self.recycle_slice(slice),
            Delivery::HotRestart { .. } => {}
        }
        false
    }

    /// Hands the current run of pieces to its stream under one lock; pieces for a stream
    /// closed locally meanwhile go back to the free lists.
    fn end_run(&self, sink: &mut Sink) {
        let Some(stream) = sink.run.take() else {
            return;
        };
        if let Some(w) = stream.push_all(&mut sink.pieces, |segment| self.recycle(segment)) {
            sink.wakes.push(w);
        }
    }

    /// Applies the closes that came through the queue (the socket has been read dry since).
    fn apply_closes(&self, sink: &mut Sink) {
        if sink.closes.is_empty() {
            return;
        }
        let state = lock(&self.state);
        for id in sink.closes.drain(..) {
            if let Some(s) = state.streams.get(&id) {
                tracing::debug!(target: "shmlink::stream", session = self.id, stream = id, "stream closed by the peer");
                sink.wakes.extend(s.peer_closed());
            }
        }
    }
}
