//! Sessions: the connection between a client and a server, its shared memory, and the driver
//! thread that reads control frames and drains the receive queue.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shmlink_core::buffer::Segment;
use shmlink_core::frame::{Decoded, Frame, FrameDecoder, Message};
use shmlink_core::handshake::{ClientHandshake, Input, MemMode, Output, ServerHandshake};
use shmlink_core::queue::{Drain, Element, QueueError, Side, Wake};
use shmlink_core::session::{self as core_session, CloseAction, Delivery, Metrics, Piece};
use shmlink_linux::name::unique_prefix;
use shmlink_linux::region::{PeerFilePolicy, SharedRegion};
use shmlink_linux::socket::{Conn, Peer, TransportError};

use crate::error::CloseReason;
use crate::shm::{SharedBuffer, Shm};
use crate::stream::{Stream, StreamShared};
use crate::{Config, Error};

/// Data flushes retry a full queue this many times, 10 ms apart (Go: about 100 ms).
const QUEUE_FULL_RETRIES: u32 = 10;
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(10);
/// Bytes requested from the socket per read by the driver.
const READ_CHUNK: usize = 64 * 1024;

pub(crate) struct State {
    pub(crate) core: core_session::Session,
    pub(crate) streams: HashMap<u32, Arc<StreamShared>>,
    accept: VecDeque<Arc<StreamShared>>,
    pub(crate) close_reason: Option<CloseReason>,
}

pub(crate) struct Inner {
    pub(crate) shm: Shm,
    pub(crate) state: Mutex<State>,
    accept_cv: Condvar,
    writer: Mutex<Conn>,
    closed: AtomicBool,
    epoch: Instant,
    pub(crate) max_frame_len: u32,
    pub(crate) on_exhaustion: crate::Exhaustion,
    pub(crate) write_timeout: Duration,
    driver: Mutex<Option<JoinHandle<()>>>,
}

/// A shmipc session: one socket, one queue region, one buffer region, many streams.
///
/// Clients create sessions with [`Session::connect`]; servers get them from
/// [`Listener::accept`](crate::Listener::accept). Dropping the session closes it: the
/// socket is shut down, streams see the end, and the regions are unmapped (and their files
/// removed) once the last stream and view are gone.
///
/// ```no_run
/// use std::io::{Read, Write};
/// use shmlink::{Config, Session};
///
/// let session = Session::connect("/tmp/echo.sock", Config::default())?;
/// let mut stream = session.open_stream()?;
/// stream.write_all(b"hello")?; // copied into shared memory and published
/// let mut reply = [0u8; 5];
/// stream.read_exact(&mut reply)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Session {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("version", &self.version())
            .field("closed", &self.is_closed())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-process registry of buffer regions mapped by the server, keyed by the announced path:
/// Go's server shares one mapping per buffer path (PROTOCOL.md 4.12), and a client that opens
/// several sessions announces the same path for all of them.
/// The key includes the peer's uid, so one user can never name another user's buffer path
/// and be handed that user's mapping.
type Registry = HashMap<(u32, Vec<u8>), Weak<SharedBuffer>>;

fn buffer_registry() -> &'static Mutex<Registry> {
    static REGISTRY: std::sync::OnceLock<Mutex<Registry>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn handshake_err(timeout: Duration) -> impl Fn(TransportError) -> Error {
    move |e| {
        if e.is_timeout() {
            Error::HandshakeTimeout(timeout)
        } else {
            Error::Transport(e)
        }
    }
}

impl Session {
    /// Connects to a server listening on the unix socket `path` and runs the handshake.
    pub fn connect(path: impl AsRef<Path>, config: Config) -> Result<Session, Error> {
        Self::client(Conn::connect_unix(path.as_ref())?, config)
    }

    /// Connects over TCP (file mode only: memfds cannot cross TCP).
    pub fn connect_tcp(
        addr: impl std::net::ToSocketAddrs,
        config: Config,
    ) -> Result<Session, Error> {
        if config.mem_mode == MemMode::Memfd {
            return Err(TransportError::MemfdOverTcp.into());
        }
        Self::client(Conn::connect_tcp(addr)?, config)
    }

    /// Runs the client side on an already connected socket: creates and formats the queue
    /// and buffer regions, then the handshake (bounded by `initialize_timeout`).
    pub fn client(conn: Conn, config: Config) -> Result<Session, Error> {
        config.validate()?;
        if config.mem_mode == MemMode::Memfd && !conn.is_unix() {
            return Err(TransportError::MemfdOverTcp.into());
        }
        let prefix = unique_prefix(&config.path_prefix);
        let queue_path = format!("{prefix}_queue_0");
        let buffer_path = format!("{prefix}_buffer");
        let queue_len = shmlink_core::queue::region_size(config.queue_cap);
        let (queue, buffer) = match config.mem_mode {
            MemMode::Memfd => (
                SharedRegion::create_memfd(&queue_path, queue_len)?,
                SharedRegion::create_memfd(&buffer_path, config.buffer_capacity)?,
            ),
            MemMode::File => (
                SharedRegion::create_file(Path::new(&queue_path), queue_len)?,
                SharedRegion::create_file(Path::new(&buffer_path), config.buffer_capacity)?,
            ),
        };
        let shm = Shm::create(queue, buffer, config.queue_cap, &config.size_classes)?;
        let mut hs = match (config.mem_mode, config.file_mode_v3) {
            (MemMode::File, true) => {
                ClientHandshake::v3_file(queue_path.as_bytes(), buffer_path.as_bytes())
            }
            (mode, _) => ClientHandshake::new(mode, queue_path.as_bytes(), buffer_path.as_bytes()),
        };
        let timeout = config.initialize_timeout;
        let deadline = Instant::now() + timeout;
        let to_err = handshake_err(timeout);
        let mut frame_buf = Vec::new();
        let mut out = hs.start()?;
        let version = loop {
            set_deadline(&conn, deadline, timeout)?;
            out = match out {
                Output::Send(bytes) => {
                    conn.send(&bytes, "send a handshake frame")
                        .map_err(&to_err)?;
                    hs.step(Input::Sent)?
                }
                Output::ReadFrame => {
                    conn.read_frame(&mut frame_buf, "read a handshake frame")
                        .map_err(&to_err)?;
                    hs.step(Input::Frame(decode_one(&frame_buf)?))?
                }
                Output::SendFds => {
                    conn.send_fds(shm.buffer_mapping().fd(), shm.queue_mapping().fd())
                        .map_err(&to_err)?;
                    hs.step(Input::Sent)?
                }
                Output::Done { version } => break version,
                Output::RecvFds | Output::Map { .. } => {
                    unreachable!("the client handshake never asks for a server step")
                }
            };
        };
        Self::start(conn, shm, Side::Client, version, config)
    }

    /// Runs the server side of the handshake on an accepted socket and maps the client's
    /// regions. `config` supplies only the timeouts: the client decides the memory layout.
    pub(crate) fn server(conn: Conn, config: Config) -> Result<Session, Error> {
        let timeout = config.initialize_timeout;
        let deadline = Instant::now() + timeout;
        let to_err = handshake_err(timeout);
        let mut hs = ServerHandshake::new();
        let mut frame_buf = Vec::new();
        // File-mode paths must belong to the peer: its uid from SO_PEERCRED, or ours when the
        // socket cannot say (TCP: file mode only works on one host anyway).
        let owner = match conn.peer() {
            Peer::Unix { uid, .. } => uid,
            _ => rustix::process::geteuid().as_raw(),
        };
        let policy = PeerFilePolicy {
            dirs: &config.shm_dirs,
            owner: Some(owner),
            setting: "Config::shm_dirs",
        };
        let mut fds = None;
        let mut shm = None;
        let mut out = hs.start();
        let version = loop {
            set_deadline(&conn, deadline, timeout)?;
            out = match out {
                Output::ReadFrame => {
                    conn.read_frame(&mut frame_buf, "read a handshake frame")
                        .map_err(&to_err)?;
                    hs.step(Input::Frame(decode_one(&frame_buf)?))?
                }
                Output::Send(bytes) => {
                    conn.send(&bytes, "send a handshake frame")
                        .map_err(&to_err)?;
                    hs.step(Input::Sent)?
                }
                Output::RecvFds => {
                    if !conn.is_unix() {
                        return Err(TransportError::MemfdOverTcp.into());
                    }
                    fds = Some(conn.recv_fds().map_err(&to_err)?);
                    hs.step(Input::FdsReceived)?
                }
                Output::Map {
                    mode,
                    queue_path,
                    buffer_path,
                } => {
                    shm = Some(map_client_regions(
                        mode,
                        &queue_path,
                        &buffer_path,
                        fds.take(),
                        &policy,
                    )?);
                    hs.step(Input::Mapped)?
                }
                Output::Done { version } => break version,
                Output::SendFds => {
                    unreachable!("the server handshake never asks for a client step")
                }
            };
        };
        let shm = shm.ok_or_else(|| {
            Error::ProtocolViolation("the handshake finished without mapping the regions".into())
        })?;
        Self::start(conn, shm, Side::Server, version, config)
    }

    fn start(
        conn: Conn,
        shm: Shm,
        side: Side,
        version: u8,
        config: Config,
    ) -> Result<Session, Error> {
        conn.set_read_timeout(None)?;
        conn.set_write_timeout(Some(config.connection_write_timeout))?;
        let reader = conn.try_clone()?;
        let breaker = config.circuit_breaker.as_millis() as u64;
        let max_frame_len = config.max_frame_len;
        let inner = Arc::new(Inner {
            shm,
            state: Mutex::new(State {
                core: core_session::Session::new(side, version, breaker),
                streams: HashMap::new(),
                accept: VecDeque::new(),
                close_reason: None,
            }),
            accept_cv: Condvar::new(),
            writer: Mutex::new(conn),
            closed: AtomicBool::new(false),
            epoch: Instant::now(),
            max_frame_len,
            on_exhaustion: config.on_exhaustion,
            write_timeout: config.write_timeout,
            driver: Mutex::new(None),
        });
        let driver_inner = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("shmlink-driver".into())
            .spawn(move || drive(driver_inner, reader, max_frame_len))
            .map_err(Error::Io)?;
        *lock(&inner.driver) = Some(handle);
        Ok(Session { inner })
    }

    /// Opens a stream (client side). Nothing is sent until the first flush.
    pub fn open_stream(&self) -> Result<Stream, Error> {
        let inner = &self.inner;
        let mut state = inner.live_state()?;
        let id = state
            .core
            .open_stream(inner.now_ms())
            .map_err(Error::from)?;
        let shared = Arc::new(StreamShared::new(id));
        state.streams.insert(id, Arc::clone(&shared));
        Ok(Stream::new(Arc::clone(inner), shared))
    }

    /// Waits for the next stream the peer opens (server side), up to `timeout` if given.
    pub fn accept_stream(&self, timeout: Option<Duration>) -> Result<Stream, Error> {
        let inner = &self.inner;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut state = lock(&inner.state);
        loop {
            if let Some(shared) = state.accept.pop_front() {
                return Ok(Stream::new(Arc::clone(inner), shared));
            }
            if let Some(reason) = &state.close_reason {
                return Err(reason.error());
            }
            state = match deadline {
                None => inner
                    .accept_cv
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout);
                    }
                    inner
                        .accept_cv
                        .wait_timeout(state, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }

    /// The negotiated protocol version (2 or 3).
    pub fn version(&self) -> u8 {
        lock(&self.inner.state).core.version()
    }

    /// Whether the session has closed.
    pub fn is_closed(&self) -> bool {
        // SYNC: Acquire; pairs with the AcqRel swap in Inner::shutdown.
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Why the session closed, once it has: the error every operation now returns.
    pub fn close_reason(&self) -> Option<Error> {
        lock(&self.inner.state)
            .close_reason
            .as_ref()
            .map(CloseReason::error)
    }

    /// Whether the circuit breaker is closed (no fallback in the last `circuit_breaker`).
    pub fn is_healthy(&self) -> bool {
        lock(&self.inner.state).core.is_healthy(self.inner.now_ms())
    }

    /// Go's metrics for this session.
    pub fn metrics(&self) -> Metrics {
        let mut m = lock(&self.inner.state).core.metrics();
        // Go reports the queues' tails (every element ever enqueued, closes included).
        m.send_queue_count = self.inner.shm.send.queue().pushed_total().max(0) as u64;
        m.receive_queue_count = lock(&self.inner.shm.recv).queue().pushed_total().max(0) as u64;
        m
    }

    /// Shared-memory usage: (capacity, bytes in use), Go's ShareMemoryMetrics.
    pub fn shared_memory_usage(&self) -> (u32, u32) {
        let b = &self.inner.shm.buffers;
        (b.capacity_bytes(), b.in_use_bytes())
    }

    /// Whether every slice of the buffer region is back in its free list.
    pub fn all_buffers_free(&self) -> bool {
        self.inner.shm.buffers.all_free()
    }

    /// Closes the session: the socket is shut down and streams see the end.
    pub fn close(&self) {
        self.inner.shutdown(CloseReason::Local);
        self.inner.join_driver();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

fn set_deadline(conn: &Conn, deadline: Instant, timeout: Duration) -> Result<(), Error> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::HandshakeTimeout(timeout));
    }
    conn.set_read_timeout(Some(left))?;
    conn.set_write_timeout(Some(left))?;
    Ok(())
}

fn decode_one(bytes: &[u8]) -> Result<Frame<'_>, Error> {
    match Frame::decode(bytes).map_err(TransportError::from)? {
        Decoded::Frame(frame, _) => Ok(frame),
        Decoded::Incomplete { .. } => Err(TransportError::Closed {
            context: "read a handshake frame",
        }
        .into()),
    }
}

fn map_client_regions(
    mode: MemMode,
    queue_path: &[u8],
    buffer_path: &[u8],
    fds: Option<[std::os::fd::OwnedFd; 2]>,
    policy: &PeerFilePolicy<'_>,
) -> Result<Shm, Error> {
    let queue_name = String::from_utf8_lossy(queue_path).into_owned();
    let buffer_name = String::from_utf8_lossy(buffer_path).into_owned();
    let (queue, new_buffer_fd) = match (mode, fds) {
        (MemMode::Memfd, Some([buffer_fd, queue_fd])) => (
            SharedRegion::from_fd(queue_fd, &queue_name)?,
            Some(buffer_fd),
        ),
        (MemMode::Memfd, None) => {
            return Err(Error::ProtocolViolation(
                "memfd handshake without the two fds".into(),
            ));
        }
        (MemMode::File, _) => {
            // The peer's files are removed only once they proved to be shmipc regions (below).
            (
                SharedRegion::open_peer_file(Path::new(OsStr::from_bytes(queue_path)), policy)?,
                None,
            )
        }
    };
    let mut registry = lock(buffer_registry());
    registry.retain(|_, weak| weak.strong_count() > 0);
    let key = (policy.owner.unwrap_or(u32::MAX), buffer_path.to_vec());
    let buffer = match registry.get(&key).and_then(Weak::upgrade) {
        // Go reuses the mapping of a known buffer path and closes a newly received fd.
        Some(existing) => existing,
        None => {
            let region = match new_buffer_fd {
                Some(fd) => SharedRegion::from_fd(fd, &buffer_name)?,
                None => {
                    SharedRegion::open_peer_file(Path::new(OsStr::from_bytes(buffer_path)), policy)?
                }
            };
            let region = SharedBuffer::mapped(region)?;
            let region = Arc::new(region);
            registry.insert(key, Arc::downgrade(&region));
            region
        }
    };
    drop(registry);
    let shm = Shm::attach(queue, buffer)?;
    if mode == MemMode::File {
        // Both are valid shmipc regions: remove them on close, as Go's server does.
        shm.queue_mapping().set_remove_on_drop(true);
        shm.buffer_mapping().set_remove_on_drop(true);
    }
    Ok(shm)
}

impl Inner {
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The state, or the reason the session closed.
    pub(crate) fn live_state(&self) -> Result<MutexGuard<'_, State>, Error> {
        let state = lock(&self.state);
        match &state.close_reason {
            Some(reason) => Err(reason.error()),
            None => Ok(state),
        }
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn is_closed(&self) -> bool {
        // SYNC: Acquire; pairs with the AcqRel swap in Inner::shutdown.
        self.closed.load(Ordering::Acquire)
    }

    /// Sends a control frame on the socket. FallbackData goes out as its 16-byte prefix
    /// plus the payload where it already is (one vectored write); other frames are small and
    /// are encoded whole.
    pub(crate) fn send_frame(&self, frame: &Frame<'_>) -> Result<(), Error> {
        let writer = lock(&self.writer);
        let result = match frame.message {
            Message::FallbackData { data, .. } => {
                let (prefix, n) = frame.prefix().map_err(TransportError::from)?;
                writer.send_vectored(&[&prefix[..n], data], "send fallback data")
            }
            _ => {
                let mut bytes = [0u8; 16];
                let n = frame.encode(&mut bytes).map_err(TransportError::from)?;
                writer.send(&bytes[..n], "send a control frame")
            }
        };
        drop(writer);
        if let Err(e) = result {
            let reason = if e.is_peer_gone() {
                CloseReason::Peer
            } else {
                CloseReason::Lost(format!("socket write failed: {e}"))
            };
            let error = reason.error();
            self.shutdown(reason);
            return Err(error);
        }
        Ok(())
    }

    fn version(&self) -> u8 {
        lock(&self.state).core.version()
    }

    /// Pushes `element`, retrying a full queue like Go, and wakes the peer if needed.
    ///
    /// An error means the element was not pushed, except when the push succeeded and only
    /// the wake-up failed: the session is then closed (the socket is gone) and the element's
    /// slices may be the peer's, so the caller must not recycle them; that case is
    /// `Ok(Err(_))`.
    ///
    /// With a `deadline` (the [`Exhaustion::Wait`](crate::Exhaustion) policy) a full queue is
    /// retried until then and ends in [`Error::Timeout`]; without, Go's ten retries.
    pub(crate) fn push_element(
        &self,
        element: Element,
        deadline: Option<Instant>,
    ) -> Result<Result<(), Error>, Error> {
        let mut attempt = 0;
        loop {
            if self.is_closed() {
                return Err(self.close_error());
            }
            match self.shm.send.push(element) {
                Ok(Wake::NotifyPeer) => {
                    lock(&self.state).core.sent_polling();
                    return Ok(self.send_frame(&Frame::new(self.version(), Message::Polling)));
                }
                Ok(Wake::PeerAwake) => return Ok(Ok(())),
                Err(QueueError::Full { .. }) => {
                    attempt += 1;
                    let more = match deadline {
                        Some(d) => Instant::now() < d,
                        None => attempt <= QUEUE_FULL_RETRIES,
                    };
                    if !more {
                        lock(&self.state).core.metrics_mut().queue_full_error_count += 1;
                        return Err(if deadline.is_some() {
                            Error::Timeout
                        } else {
                            Error::QueueFull
                        });
                    }
                    let wait = if deadline.is_some() {
                        // Wake often: room comes back as soon as the peer pops.
                        Duration::from_micros(200)
                    } else {
                        QUEUE_FULL_WAIT
                    };
                    std::thread::sleep(wait);
                }
                // Pushed: the element (and its slices) are the peer's, even though the
                // session cannot go on.
                Err(e @ QueueError::FlagCorruptedAfterPush { .. }) => {
                    let reason = CloseReason::Violation(format!("send queue corrupted: {e}"));
                    let error = reason.error();
                    self.shutdown(reason);
                    return Ok(Err(error));
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

    /// Closes stream `id` on the wire if the protocol requires it.
    pub(crate) fn close_stream(&self, id: u32) {
        let action = {
            let mut state = lock(&self.state);
            state.streams.remove(&id);
            if state.close_reason.is_some() {
                return;
            }
            state.core.close_stream(id)
        };
        if let CloseAction::SendClose(element) = action {
            match self.shm.send.push(element) {
                Ok(Wake::NotifyPeer) => {
                    lock(&self.state).core.sent_polling();
                    let _ = self.send_frame(&Frame::new(self.version(), Message::Polling));
                }
                Ok(Wake::PeerAwake) => {}
                Err(QueueError::Full { .. }) => {
                    let close = Frame::new(self.version(), Message::StreamClose { stream_id: id });
                    let _ = self.send_frame(&close);
                }
                Err(e) => {
                    self.shutdown(CloseReason::Violation(format!("send queue corrupted: {e}")))
                }
            }
        }
    }

    pub(crate) fn close_error(&self) -> Error {
        lock(&self.state)
            .close_reason
            .as_ref()
            .map_or(Error::ClosedLocally, CloseReason::error)
    }

    /// Marks the session closed, wakes everyone, and shuts the socket down.
    pub(crate) fn shutdown(&self, reason: CloseReason) {
        // SYNC: AcqRel; the swap makes shutdown run once; pairs with the Acquire loads in is_closed.
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let streams: Vec<Arc<StreamShared>> = {
            let mut state = lock(&self.state);
            state.close_reason = Some(reason.clone());
            state.core.clear();
            state.accept.clear();
            state.streams.drain().map(|(_, s)| s).collect()
        };
        for stream in streams {
            stream.session_closed(&reason);
        }
        self.accept_cv.notify_all();
        lock(&self.writer).shutdown();
    }

    fn join_driver(&self) {
        let handle = lock(&self.driver).take();
        if let Some(handle) = handle {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    /// Runs `f` on the core session with a sink that routes deliveries to streams, then
    /// wakes acceptors if a stream was opened.
    fn with_core<R>(
        &self,
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
        let result = f(core, &mut |d| opened |= self.deliver(streams, accept, d));
        drop(state);
        if opened {
            self.accept_cv.notify_all();
        }
        result
    }

    /// Handles one control frame from the peer.
    fn handle_frame(&self, frame: &Frame<'_>) -> Result<(), Error> {
        let now = self.now_ms();
        self.with_core(|core, mut sink| core.on_frame(frame, now, &mut sink))?;
        if let Message::Polling = frame.message {
            self.drain()?;
        }
        Ok(())
    }

    /// Pops every element of the receive queue, then runs the working-flag handshake.
    fn drain(&self) -> Result<(), Error> {
        let mut consumer = lock(&self.shm.recv);
        loop {
            self.with_core(|core, mut sink| {
                while let Some(element) = consumer.pop()? {
                    core.on_element(element, &self.shm.buffers, &mut sink)?;
                }
                Ok::<(), Error>(())
            })?;
            match consumer.finish_drain()? {
                Drain::Idle => return Ok(()),
                Drain::Again => {}
            }
        }
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
}

/// The driver thread: reads frames until the socket ends or the peer breaks the protocol.
fn drive(inner: Arc<Inner>, reader: Conn, max_frame_len: u32) {
    let mut decoder = FrameDecoder::with_limit(max_frame_len);
    // One buffer for every read: zero-filling a fresh area per wake-up would cost more than
    // copying the few bytes (usually one 8-byte Polling frame) a read returns.
    let mut buf = vec![0u8; READ_CHUNK];
    let reason = 'session: loop {
        let n = match reader.read_some(&mut buf) {
            Ok(n) => n,
            Err(e) if e.is_peer_gone() => break 'session CloseReason::Peer,
            Err(e) => break 'session CloseReason::Lost(format!("socket read failed: {e}")),
        };
        if n == 0 {
            break 'session CloseReason::Peer;
        }
        decoder.extend(&buf[..n]);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'session CloseReason::Violation(format!("bad frame: {e}")),
            };
            if let Err(e) = inner.handle_frame(&frame) {
                lock(&inner.state).core.metrics_mut().event_conn_error_count += 1;
                break 'session match e {
                    Error::ProtocolViolation(detail) => CloseReason::Violation(detail),
                    Error::ConnectionLost(detail) => CloseReason::Lost(detail),
                    other => CloseReason::Violation(other.to_string()),
                };
            }
        }
    };
    inner.shutdown(reason);
}
