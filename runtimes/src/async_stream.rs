//! The async API: [`AsyncSession`], [`AsyncStream`] and its owned halves, the same for every
//! runtime (the runtime only decides how the socket's readiness and timers are awaited; see
//! [`crate::tokio`] and [`crate::smol`]).
//!
//! Every wait is a poll of the session driver by the waiting task itself: no thread or task
//! hop between the receive queue and the reader.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::driver::{Inner, WaitSlot};
use crate::rt::{Timer, poll_fn};
use crate::session::session_common;
use crate::stream::{Async, Forget, Link, ReadSide, Reservation};
use crate::{Error, Pieces, View};

/// A session driven by an async runtime. Made by `shmlink::tokio::connect` /
/// `shmlink::smol::connect` (client) or `accept` (server); dropping it closes it.
///
/// ```no_run
/// # #[cfg(feature = "tokio")]
/// # async fn demo() -> Result<(), shmlink::Error> {
/// let session = shmlink::tokio::connect("/tmp/echo.sock", shmlink::Config::default()).await?;
/// let mut stream = session.open_stream()?;
/// stream.send(b"ping").await?;
/// let reply = stream.read_bytes(4).await?;
/// # Ok(()) }
/// ```
pub struct AsyncSession {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AsyncSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncSession")
            .field("version", &self.inner.version())
            .field("closed", &self.inner.is_closed())
            .finish()
    }
}

impl AsyncSession {
    /// Opens a stream (client side). Nothing is sent until the first write.
    ///
    /// ```no_run
    /// # async fn demo(session: &shmlink::AsyncSession) -> Result<(), shmlink::Error> {
    /// let stream = session.open_stream()?;
    /// stream.send(b"request").await?;
    /// # Ok(()) }
    /// ```
    pub fn open_stream(&self) -> Result<AsyncStream, Error> {
        AsyncStream::open(&self.inner)
    }

    /// Waits for the next stream the peer opens (server side), up to `timeout` if given.
    ///
    /// Cancellation-safe: a stream opened while the future was pending is not lost; the
    /// next call returns it.
    ///
    /// ```no_run
    /// # async fn demo(session: &shmlink::AsyncSession) -> Result<(), shmlink::Error> {
    /// use std::time::Duration;
    /// match session.accept_stream(Some(Duration::from_secs(1))).await {
    ///     Ok(stream) => println!("stream {}", stream.id()),
    ///     Err(shmlink::Error::Timeout) => println!("nobody opened one"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn accept_stream(&self, timeout: Option<Duration>) -> Result<AsyncStream, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut slot = WaitSlot::acceptor();
        let inner = &self.inner;
        // Dropped while waiting: gives up any spin for the session.
        let wait = Forget {
            slot: &mut slot,
            inner,
        };
        let shared = poll_fn(|cx| inner.poll_accept(cx, wait.slot, deadline)).await;
        drop(wait);
        Ok(AsyncStream::new(Link::new(Arc::clone(inner), shared?)))
    }
}

impl AsyncSession {
    /// Closes the session gracefully and waits for it: no new streams; once the peer has
    /// taken what is queued for it (or after [`Config::shutdown_timeout`](crate::Config)), the
    /// socket closes.
    ///
    /// ```no_run
    /// # async fn demo(session: shmlink::AsyncSession) -> Result<(), shmlink::Error> {
    /// let mut stream = session.open_stream()?;
    /// stream.send(b"bye").await?;
    /// stream.close();
    /// session.shutdown().await; // the peer reads "bye", then the end of the stream
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self) {
        self.inner.shutdown_async().await;
    }
}

session_common!(AsyncSession);

/// Write-side bookkeeping of `poll_write`/`poll_flush`: the back-off timer and since when the
/// current write has been waiting.
#[derive(Default)]
struct WriteWait {
    timer: Option<Box<dyn Timer>>,
    since: Option<Instant>,
    pause: Duration,
}

impl WriteWait {
    fn done(&mut self) {
        self.since = None;
        self.pause = Duration::ZERO;
    }
}

/// The write side shared by [`AsyncStream`] and [`WriteHalf`].
struct Writer {
    link: Arc<Link>,
    write_timeout: Duration,
    wait: WriteWait,
}

impl Writer {
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<Result<usize, Error>> {
        match self.link.try_send(buf) {
            Ok(Some(n)) => {
                self.wait.done();
                Poll::Ready(Ok(n))
            }
            Err(e) => {
                self.wait.done();
                Poll::Ready(Err(e))
            }
            Ok(None) => {
                // Memory or the queue is full: look again after a pause, within the write
                // timeout (Wait policy) or Go's 100 ms of queue retries (otherwise).
                let now = Instant::now();
                let since = *self.wait.since.get_or_insert(now);
                let wait_policy = self.link.inner.settings.on_exhaustion == crate::Exhaustion::Wait;
                let limit = if wait_policy {
                    self.write_timeout
                } else {
                    Duration::from_millis(100)
                };
                if now >= since + limit {
                    self.wait.done();
                    return Poll::Ready(Err(if wait_policy {
                        Error::Timeout
                    } else {
                        self.link
                            .inner
                            .lock_state()
                            .core
                            .metrics_mut()
                            .stability
                            .queue_full_error_count += 1;
                        Error::QueueFull
                    }));
                }
                self.wait.pause = (self.wait.pause * 2)
                    .clamp(Duration::from_micros(50), Duration::from_millis(2));
                let at = now + self.wait.pause;
                let inner = &self.link.inner;
                let timer = self.wait.timer.get_or_insert_with(|| inner.timer());
                if timer.poll_at(cx, at).is_ready() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let since = *self.wait.since.get_or_insert_with(Instant::now);
        let result = self
            .link
            .inner
            .poll_flushed(cx, &mut self.wait.timer, since);
        if result.is_ready() {
            self.wait.done();
        }
        result
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match self.poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                self.link.close();
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

/// One stream of an [`AsyncSession`]. Dropping it closes it (the peer is told, as Go does).
///
/// Reads and writes take `&mut self`/`&self` like the blocking [`Stream`](crate::Stream); use
/// [`into_split`](Self::into_split) to read and write from two tasks.
///
/// Cancellation: every read method is cancellation-safe (dropping its future loses no
/// received bytes; they stay buffered for the next read). [`send`](Self::send) and
/// [`Reservation::commit`] publish at most once: dropped before they complete, the message
/// may or may not have been sent.
pub struct AsyncStream {
    read: ReadSide,
    writer: Writer,
    /// The deadline of a `poll_read` in progress (the read timeout, from its first poll).
    poll_deadline: Option<Option<Instant>>,
    /// Taken apart by `into_split`: the halves close the stream.
    split: bool,
}

impl std::fmt::Debug for AsyncStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncStream")
            .field("id", &self.writer.link.id())
            .finish()
    }
}

impl AsyncStream {
    /// A new stream on `inner` (client side).
    pub(crate) fn open(inner: &Arc<Inner>) -> Result<Self, Error> {
        let shared = inner.open_stream()?;
        Ok(Self::new(Link::new(Arc::clone(inner), shared)))
    }

    /// A stream the peer opened, accepted through a listener.
    #[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
    pub(crate) fn from_parts(inner: Arc<Inner>, shared: Arc<crate::stream::StreamShared>) -> Self {
        Self::new(Link::new(inner, shared))
    }

    fn new(link: Arc<Link>) -> Self {
        let write_timeout = link.inner.settings.write_timeout;
        Self {
            read: ReadSide::new(),
            writer: Writer {
                link,
                write_timeout,
                wait: WriteWait::default(),
            },
            poll_deadline: None,
            split: false,
        }
    }

    fn link(&self) -> &Arc<Link> {
        &self.writer.link
    }

    /// Whether the stream cannot be reused (closed on either side, or its session is over).
    pub(crate) fn is_ended(&self) -> bool {
        self.link().is_ended()
    }

    /// The session this stream belongs to.
    pub(crate) fn session_inner(&self) -> &Arc<Inner> {
        &self.link().inner
    }

    /// Back to a fresh stream's settings, for a pool.
    pub(crate) fn reset(&mut self) {
        self.read.read_timeout = None;
        self.poll_deadline = None;
        self.writer.write_timeout = self.link().inner.settings.write_timeout;
    }

    /// The stream id (the client's first stream is 2).
    ///
    /// ```no_run
    /// # fn demo(session: &shmlink::AsyncSession) -> Result<(), shmlink::Error> {
    /// let stream = session.open_stream()?;
    /// println!("stream {}", stream.id());
    /// # Ok(()) }
    /// ```
    pub fn id(&self) -> u32 {
        self.link().id()
    }

    /// Bounds every read (`None`: wait for ever, until data, end or session close); a read
    /// that runs out of time fails with [`Error::Timeout`] and consumes nothing. For
    /// `AsyncRead::poll_read` the time runs from the first poll after the last completed
    /// read, so prefer the read methods (their deadline is per call) inside `select!`.
    ///
    /// ```no_run
    /// # async fn demo(stream: &mut shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// use std::time::Duration;
    /// stream.set_read_timeout(Some(Duration::from_millis(100)));
    /// match stream.read_view().await {
    ///     Err(shmlink::Error::Timeout) => println!("nothing within 100 ms"),
    ///     other => { other?; }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read.read_timeout = timeout;
    }

    /// Bounds how long a write waits for shared memory or queue room under
    /// [`Exhaustion::Wait`](crate::Exhaustion) (then [`Error::Timeout`]; nothing is sent).
    ///
    /// ```no_run
    /// # fn demo(stream: &mut shmlink::AsyncStream) {
    /// stream.set_write_timeout(std::time::Duration::from_secs(1));
    /// # }
    /// ```
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.writer.write_timeout = timeout;
    }

    /// Whether this stream now sends over the socket because shared memory ran out (the
    /// Fallback policy; a stream stays there so that its bytes never overtake each other).
    ///
    /// ```no_run
    /// # async fn demo(stream: &shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// stream.send(&vec![0u8; 64 << 20]).await?; // larger than all shared memory
    /// assert!(stream.is_fallback());
    /// # Ok(()) }
    /// ```
    pub fn is_fallback(&self) -> bool {
        self.link().is_fallback()
    }

    /// Reserves `n` bytes to write into directly (see [`Stream::reserve`](crate::Stream::reserve));
    /// waits for memory under the Wait policy. Cancellation-safe.
    ///
    /// ```no_run
    /// # async fn demo(stream: &shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// use bytes::BufMut;
    /// let mut r = stream.reserve(64).await?;
    /// r.put_u32(5); // a serializer writing straight into shared memory
    /// r.put_slice(b"hello");
    /// r.commit_written().await?;
    /// # Ok(()) }
    /// ```
    pub async fn reserve(&self, n: usize) -> Result<Reservation<'_, Async>, Error> {
        reserve(self.link(), n, self.writer.write_timeout).await
    }

    /// Writes `data` as one flush (copied once, into shared memory).
    ///
    /// Cancellation: dropped before it completes, the message was sent or it was not (never
    /// half), and its shared memory is never lost.
    ///
    /// ```no_run
    /// # async fn demo(stream: &shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// stream.send(b"hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, data: &[u8]) -> Result<(), Error> {
        self.link().send(data, self.writer.write_timeout).await
    }

    /// The next received piece, zero copy, or `None` at the end of the stream.
    /// Cancellation-safe.
    ///
    /// ```no_run
    /// # async fn demo(stream: &mut shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// while let Some(view) = stream.read_view().await? {
    ///     println!("{} bytes in {}", view.len(), if view.is_shared_memory() { "shared memory" } else { "a fallback frame" });
    /// } // each view returns its slice to the peer when dropped
    /// # Ok(()) }
    /// ```
    pub async fn read_view(&mut self) -> Result<Option<View>, Error> {
        let link = Arc::clone(self.link());
        self.read.read_view(&link).await
    }

    /// Bytes received and not yet read (takes in what the peer sent; never waits).
    ///
    /// ```no_run
    /// # fn demo(stream: &shmlink::AsyncStream) {
    /// if stream.available() == 0 {
    ///     println!("a read would wait");
    /// }
    /// # }
    /// ```
    pub fn available(&self) -> usize {
        self.read.available(self.link())
    }

    /// Exactly `n` bytes as [`Bytes`] (zero copy when they lie in one slice); `Ok(None)` at
    /// the end of the stream. Cancellation-safe. See
    /// [`Stream::read_bytes`](crate::Stream::read_bytes).
    ///
    /// ```no_run
    /// # async fn demo(stream: &mut shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// // A length-prefixed message.
    /// if let Some(len) = stream.read_bytes(4).await? {
    ///     let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    ///     let body = stream.read_bytes(len).await?.ok_or(shmlink::Error::StreamEnded)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read_bytes(&mut self, n: usize) -> Result<Option<Bytes>, Error> {
        let link = Arc::clone(self.link());
        self.read.read_bytes(&link, n).await
    }

    /// Sends `body` as one length-prefixed message (4-byte big-endian length, then the body)
    /// in one reservation of shared memory, as [`Stream::send_message`](crate::Stream::send_message).
    ///
    /// ```no_run
    /// # async fn demo(stream: &mut shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// stream.send_message(b"request").await?;
    /// let reply = stream.recv_message(1 << 20).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// For tokio-util's types, `tokio_util::codec::Framed::new(stream,
    /// LengthDelimitedCodec::new())` speaks the same framing over this stream's `AsyncRead`
    /// and `AsyncWrite`, at the price of a copy each way.
    pub async fn send_message(&self, body: &[u8]) -> Result<(), Error> {
        let len = crate::stream::message_len(body)?;
        let mut r = self.reserve(4 + body.len()).await?;
        r.write_at(0, &len);
        r.write_at(4, body);
        r.commit(4 + body.len()).await
    }

    /// The next length-prefixed message as `Bytes`, zero copy within one slice, as
    /// [`Stream::recv_message`](crate::Stream::recv_message). Cancellation-safe.
    pub async fn recv_message(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        let link = Arc::clone(self.link());
        self.read.recv_message(&link, max).await
    }

    /// The next `n` bytes without consuming them. Cancellation-safe.
    ///
    /// ```no_run
    /// # async fn demo(stream: &mut shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// let header = stream.peek(8).await?; // still there for the next read
    /// let same = stream.read_bytes(8).await?;
    /// assert_eq!(header, same);
    /// # Ok(()) }
    /// ```
    pub async fn peek(&mut self, n: usize) -> Result<Option<Bytes>, Error> {
        let link = Arc::clone(self.link());
        self.read.peek(&link, n).await
    }

    /// Up to `n` bytes as a chain of zero-copy pieces ([`bytes::Buf`]). Cancellation-safe.
    ///
    /// ```no_run
    /// # async fn demo(stream: &mut shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// use bytes::Buf;
    /// if let Some(mut pieces) = stream.read_buf(1 << 20).await? {
    ///     let first = pieces.get_u32(); // reads across slice boundaries
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read_buf(&mut self, n: usize) -> Result<Option<Pieces>, Error> {
        let link = Arc::clone(self.link());
        self.read.read_buf(&link, n).await
    }

    /// Everything received so far as zero-copy pieces, waiting only for the first: one call
    /// for a whole burst of messages. Cancellation-safe.
    ///
    /// ```no_run
    /// # async fn demo(stream: &mut shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// use bytes::Buf;
    /// while let Some(batch) = stream.read_batch().await? {
    ///     println!("{} bytes in {} pieces", batch.remaining(), batch.iter().count());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read_batch(&mut self) -> Result<Option<Pieces>, Error> {
        let link = Arc::clone(self.link());
        self.read.read_batch(&link).await
    }

    /// Closes the stream: unread data is recycled and the peer is told (it reads to the end
    /// of what was sent, then sees the end). Idempotent; dropping the stream does the same.
    ///
    /// ```no_run
    /// # async fn demo(mut stream: shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// stream.send(b"last message").await?;
    /// stream.close();
    /// # Ok(()) }
    /// ```
    pub fn close(&mut self) {
        let link = Arc::clone(self.link());
        self.read.forget(&link);
        link.close();
    }

    /// Splits the stream into a read half and a write half, usable from two tasks. The stream
    /// closes when both are dropped (or the write half is shut down).
    ///
    /// ```no_run
    /// # #[cfg(feature = "tokio")]
    /// # async fn demo(stream: shmlink::AsyncStream) -> Result<(), shmlink::Error> {
    /// let (mut read, write) = stream.into_split();
    /// let writer = tokio::spawn(async move {
    ///     for i in 0..100u32 {
    ///         write.send(&i.to_be_bytes()).await?;
    ///     }
    ///     Ok::<_, shmlink::Error>(())
    /// });
    /// while let Some(view) = read.read_view().await? {
    ///     println!("{} bytes", view.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn into_split(mut self) -> (ReadHalf, WriteHalf) {
        // The halves take over: the original's Drop must not close the stream.
        self.split = true;
        let link = Arc::clone(&self.writer.link);
        let read = ReadHalf {
            link: Arc::clone(&link),
            read: std::mem::replace(&mut self.read, ReadSide::new()),
            poll_deadline: None,
        };
        let write = WriteHalf {
            writer: Writer {
                link,
                write_timeout: self.writer.write_timeout,
                wait: std::mem::take(&mut self.writer.wait),
            },
        };
        (read, write)
    }
}

impl Drop for AsyncStream {
    fn drop(&mut self) {
        if !self.split {
            self.close();
        }
    }
}

async fn reserve(
    link: &Link,
    n: usize,
    write_timeout: Duration,
) -> Result<Reservation<'_, Async>, Error> {
    let kind = link.reserve_kind(n, write_timeout).await?;
    Ok(Reservation::new(link, n, kind, write_timeout))
}

/// The read half of an [`AsyncStream`] (from [`AsyncStream::into_split`]): every read
/// method of the stream, cancellation-safe, and `AsyncRead`. See
/// [`AsyncStream::into_split`] for an example.
pub struct ReadHalf {
    link: Arc<Link>,
    read: ReadSide,
    poll_deadline: Option<Option<Instant>>,
}

impl std::fmt::Debug for ReadHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadHalf")
            .field("id", &self.link.id())
            .finish()
    }
}

impl ReadHalf {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.link.id()
    }

    /// Bounds every read.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read.read_timeout = timeout;
    }

    /// The next received piece, zero copy. Cancellation-safe.
    pub async fn read_view(&mut self) -> Result<Option<View>, Error> {
        self.read.read_view(&self.link).await
    }

    /// Exactly `n` bytes as [`Bytes`]. Cancellation-safe.
    pub async fn read_bytes(&mut self, n: usize) -> Result<Option<Bytes>, Error> {
        self.read.read_bytes(&self.link, n).await
    }

    /// The next `n` bytes without consuming them. Cancellation-safe.
    pub async fn peek(&mut self, n: usize) -> Result<Option<Bytes>, Error> {
        self.read.peek(&self.link, n).await
    }

    /// Up to `n` bytes as a chain of zero-copy pieces. Cancellation-safe.
    pub async fn read_buf(&mut self, n: usize) -> Result<Option<Pieces>, Error> {
        self.read.read_buf(&self.link, n).await
    }
}

impl Drop for ReadHalf {
    fn drop(&mut self) {
        self.read.forget(&self.link);
    }
}

/// The write half of an [`AsyncStream`] (from [`AsyncStream::into_split`]): `reserve`,
/// `send` and `AsyncWrite`. See [`AsyncStream::into_split`] for an example.
pub struct WriteHalf {
    writer: Writer,
}

impl std::fmt::Debug for WriteHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteHalf")
            .field("id", &self.writer.link.id())
            .finish()
    }
}

impl WriteHalf {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.writer.link.id()
    }

    /// Bounds how long a write waits for memory or queue room under the Wait policy.
    pub fn set_write_timeout(&mut self, timeout: Duration) {
        self.writer.write_timeout = timeout;
    }

    /// Reserves `n` bytes to write into directly. Cancellation-safe.
    pub async fn reserve(&self, n: usize) -> Result<Reservation<'_, Async>, Error> {
        reserve(&self.writer.link, n, self.writer.write_timeout).await
    }

    /// Writes `data` as one flush.
    pub async fn send(&self, data: &[u8]) -> Result<(), Error> {
        self.writer.link.send(data, self.writer.write_timeout).await
    }

    /// Closes the stream for both halves (the peer sees the end once it read everything).
    pub fn close(&self) {
        self.writer.link.close();
    }
}

/// `poll_read` with the read timeout measured from the first poll of a read.
fn poll_read_timed(
    read: &mut ReadSide,
    link: &Link,
    poll_deadline: &mut Option<Option<Instant>>,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<Result<usize, Error>> {
    let deadline =
        *poll_deadline.get_or_insert_with(|| read.read_timeout.map(|t| Instant::now() + t));
    let result = read.poll_read_into(cx, link, buf, deadline);
    if result.is_ready() {
        *poll_deadline = None;
    }
    result
}

#[cfg(feature = "tokio")]
mod tokio_io {
    use super::*;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    fn read_into(
        read: &mut ReadSide,
        link: &Link,
        poll_deadline: &mut Option<Option<Instant>>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let dst = buf.initialize_unfilled();
        match poll_read_timed(read, link, poll_deadline, cx, dst) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads copy out of shared memory; `Ok(())` with nothing filled at the end of the stream.
    impl AsyncRead for AsyncStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            let link = Arc::clone(&this.writer.link);
            read_into(&mut this.read, &link, &mut this.poll_deadline, cx, buf)
        }
    }

    impl AsyncRead for ReadHalf {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            read_into(&mut this.read, &this.link, &mut this.poll_deadline, cx, buf)
        }
    }

    macro_rules! tokio_write {
        ($ty:ty, $w:ident) => {
            /// Each write is published at once (one queue element); `poll_flush` waits for
            /// socket frames (wake-ups, fallback data) the socket has not taken yet;
            /// `poll_shutdown` flushes and closes the stream.
            impl AsyncWrite for $ty {
                fn poll_write(
                    self: Pin<&mut Self>,
                    cx: &mut Context<'_>,
                    buf: &[u8],
                ) -> Poll<std::io::Result<usize>> {
                    self.get_mut().$w.poll_write(cx, buf).map_err(Into::into)
                }

                fn poll_flush(
                    self: Pin<&mut Self>,
                    cx: &mut Context<'_>,
                ) -> Poll<std::io::Result<()>> {
                    self.get_mut().$w.poll_flush(cx).map_err(Into::into)
                }

                fn poll_shutdown(
                    self: Pin<&mut Self>,
                    cx: &mut Context<'_>,
                ) -> Poll<std::io::Result<()>> {
                    self.get_mut().$w.poll_shutdown(cx).map_err(Into::into)
                }
            }
        };
    }
    tokio_write!(AsyncStream, writer);
    tokio_write!(WriteHalf, writer);
}

#[cfg(feature = "futures-io")]
mod futures_io_impl {
    use super::*;
    use futures_io::{AsyncRead, AsyncWrite};

    /// Reads copy out of shared memory; `Ok(0)` at the end of the stream.
    impl AsyncRead for AsyncStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            let link = Arc::clone(&this.writer.link);
            poll_read_timed(&mut this.read, &link, &mut this.poll_deadline, cx, buf)
                .map_err(Into::into)
        }
    }

    impl AsyncRead for ReadHalf {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            let this = self.get_mut();
            poll_read_timed(&mut this.read, &this.link, &mut this.poll_deadline, cx, buf)
                .map_err(Into::into)
        }
    }

    macro_rules! futures_write {
        ($ty:ty, $w:ident) => {
            /// Each write is published at once; `poll_flush` waits for socket frames the
            /// socket has not taken yet; `poll_close` flushes and closes the stream.
            impl AsyncWrite for $ty {
                fn poll_write(
                    self: Pin<&mut Self>,
                    cx: &mut Context<'_>,
                    buf: &[u8],
                ) -> Poll<std::io::Result<usize>> {
                    self.get_mut().$w.poll_write(cx, buf).map_err(Into::into)
                }

                fn poll_flush(
                    self: Pin<&mut Self>,
                    cx: &mut Context<'_>,
                ) -> Poll<std::io::Result<()>> {
                    self.get_mut().$w.poll_flush(cx).map_err(Into::into)
                }

                fn poll_close(
                    self: Pin<&mut Self>,
                    cx: &mut Context<'_>,
                ) -> Poll<std::io::Result<()>> {
                    self.get_mut().$w.poll_shutdown(cx).map_err(Into::into)
                }
            }
        };
    }
    futures_write!(AsyncStream, writer);
    futures_write!(WriteHalf, writer);
}

/// The connect and accept functions of one runtime.
macro_rules! runtime_entry {
    ($rt:expr, $name:literal) => {
        use std::path::Path;

        use shmlink_linux::socket::Conn;

        use crate::rt::{Runtime, off_thread, poll_fn};
        use crate::session::client_handshake;
        use crate::{AsyncSession, Config, Error, Listener};

        /// Connects to a server's unix socket and runs the handshake (on a short-lived thread
        /// of its own, so the executor never blocks), then drives the session on this
        /// runtime.
        ///
        /// ```no_run
        #[doc = concat!("# async fn demo() -> Result<(), shmlink::Error> {")]
        #[doc = concat!("let session = shmlink::", $name, "::connect(\"/tmp/echo.sock\", shmlink::Config::default()).await?;")]
        /// let stream = session.open_stream()?;
        /// # Ok(()) }
        /// ```
        pub async fn connect(
            path: impl AsRef<Path>,
            config: Config,
        ) -> Result<AsyncSession, Error> {
            let path = path.as_ref().to_owned();
            let hs = off_thread("shmlink-connect", move || {
                client_handshake(Conn::connect_unix(&path)?, config)
            })
            .await
            .map_err(Error::Io)??;
            Ok(AsyncSession {
                inner: hs.start($rt)?,
            })
        }

        /// Connects over TCP (file mode only).
        pub async fn connect_tcp(
            addr: std::net::SocketAddr,
            config: Config,
        ) -> Result<AsyncSession, Error> {
            if config.mem_mode == crate::MemMode::Memfd {
                return Err(shmlink_linux::socket::TransportError::MemfdOverTcp.into());
            }
            let hs = off_thread("shmlink-connect", move || {
                client_handshake(Conn::connect_tcp(addr)?, config)
            })
            .await
            .map_err(Error::Io)??;
            Ok(AsyncSession {
                inner: hs.start($rt)?,
            })
        }

        /// A pool of sessions to the server at `path` on this runtime (Go's
        /// `SessionManager`); see [`AsyncSessionManager`](crate::AsyncSessionManager).
        /// Fails only if no session can be made; the others are rebuilt in the background.
        ///
        /// ```no_run
        #[doc = concat!("# async fn demo() -> Result<(), shmlink::Error> {")]
        /// use shmlink::{Config, ManagerConfig};
        #[doc = concat!("let manager = shmlink::", $name, "::manager(\"/tmp/svc.sock\", Config::default(), ManagerConfig::default()).await?;")]
        /// let mut stream = manager.get_stream()?;
        /// stream.send(b"ping").await?;
        /// # Ok(()) }
        /// ```
        pub async fn manager(
            path: impl AsRef<Path>,
            config: Config,
            manager: crate::ManagerConfig,
        ) -> Result<crate::AsyncSessionManager, Error> {
            let connect = crate::manager::connector($rt)?;
            crate::AsyncSessionManager::start(path.as_ref(), config, manager, connect).await
        }

        /// Waits for the next client of `listener` whose handshake finished (handshakes run on
        /// their own threads, so a silent client never delays this). Cancellation-safe.
        ///
        /// ```no_run
        #[doc = concat!("# async fn demo() -> Result<(), shmlink::Error> {")]
        /// let listener = shmlink::Listener::bind("/tmp/echo.sock", shmlink::Config::default())?;
        #[doc = concat!("let session = shmlink::", $name, "::accept(&listener).await?;")]
        /// let stream = session.accept_stream(None).await?;
        /// # Ok(()) }
        /// ```
        pub async fn accept(listener: &Listener) -> Result<AsyncSession, Error> {
            let hs = poll_fn(|cx| listener.poll_handshaken(cx)).await?;
            Ok(AsyncSession {
                inner: hs.start($rt)?,
            })
        }

        /// Waits for the next stream any client opens, across all sessions (see
        /// [`Listener::accept_stream`]; the listener runs the sessions on this runtime).
        /// Cancellation-safe: a stream that arrived meanwhile is returned by the next call.
        ///
        /// ```no_run
        #[doc = concat!("# async fn demo() -> Result<(), shmlink::Error> {")]
        /// let listener = shmlink::Listener::bind("/tmp/echo.sock", shmlink::Config::default())?;
        #[doc = concat!("let stream = shmlink::", $name, "::accept_stream(&listener).await?;")]
        /// # Ok(()) }
        /// ```
        pub async fn accept_stream(listener: &Listener) -> Result<crate::AsyncStream, Error> {
            let mut wait = listener.hub_wait($rt)?;
            let (inner, shared) = poll_fn(|cx| wait.poll(cx)).await?;
            Ok(crate::AsyncStream::from_parts(inner, shared))
        }
    };
}
pub(crate) use runtime_entry;

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<AsyncStream>();
    is_send::<ReadHalf>();
    is_send::<WriteHalf>();
    is_send::<AsyncSession>();
}
