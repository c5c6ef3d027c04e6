//! Publishing from the writer's own task: pushing elements (waiting for queue room as the
//! exhaustion policy says), and writing control and fallback frames on the socket, with an out
//! buffer for what the socket does not take at once. Never pumps, never waits for a reader.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use shmlink_core::frame::{Frame, Message};
use shmlink_core::queue::{Element, QueueError, Wake as QueueWake};

use super::{Inner, lock};
use crate::Error;
use crate::error::CloseReason;
use crate::rt::Timer;

/// A full queue is retried this many times, 10 ms apart, under the Fallback and Error
/// policies (Go: about 100 ms).
const QUEUE_FULL_RETRIES: u32 = 10;
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);

/// What a push did.
pub(crate) enum Pushed {
    /// The peer is awake: nothing to send.
    Quiet,
    /// The peer was idle: send a Polling frame.
    Notify,
    /// Pushed, but the session broke (its error).
    Broken(Error),
}

impl Inner {
    /// Sends the Polling frame a push asked for.
    pub(crate) async fn send_polling(&self) -> Result<(), Error> {
        self.send_frame(&Frame::new(self.version, Message::Polling))
            .await
    }

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
    pub(super) fn flush_out(&self, out: &mut Vec<u8>) -> std::io::Result<bool> {
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
    pub(super) fn flush_out_now(&self) {
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

    pub(super) fn fail_send_io(&self, e: std::io::Error) -> Error {
        let reason = match e.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                CloseReason::Peer
            }
            _ => CloseReason::Lost(format!("socket write failed: {e}")),
        };
        self.fail_send(reason)
    }
}
