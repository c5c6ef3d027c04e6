//! Sessions: the connection between a client and a server, its shared memory, and the
//! handshake that sets them up. There is no driver thread: whoever waits on the session pumps
//! it (`driver/`), and the monitor thread drains sessions nobody waits on.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use shmlink_core::frame::{Decoded, Frame};
use shmlink_core::handshake::{ClientHandshake, Input, MemMode, Output, ServerHandshake};
use shmlink_core::queue::Side;
use shmlink_core::session as core_session;
use shmlink_linux::name::unique_prefix;
use shmlink_linux::region::{PeerFilePolicy, SharedRegion};
use shmlink_linux::socket::{Conn, Peer, TransportError};

use crate::driver::{Inner, Settings, WaitSlot};

use crate::rt::{Runtime, block_on, poll_fn};
use crate::shm::{SharedBuffer, Shm};
use crate::stream::Stream;
use crate::{Config, Error};

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
    pub(crate) inner: Arc<Inner>,
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
        Ok(Session {
            inner: client_handshake(conn, config)?.start(Runtime::Blocking)?,
        })
    }

    /// Opens a stream (client side). Nothing is sent until the first flush.
    pub fn open_stream(&self) -> Result<Stream, Error> {
        let shared = self.inner.open_stream()?;
        Ok(Stream::new(Arc::clone(&self.inner), shared))
    }

    /// Waits for the next stream the peer opens (server side), up to `timeout` if given.
    pub fn accept_stream(&self, timeout: Option<Duration>) -> Result<Stream, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut slot = WaitSlot::acceptor();
        let shared = block_on(poll_fn(|cx| {
            self.inner.poll_accept(cx, &mut slot, deadline)
        }))?;
        Ok(Stream::new(Arc::clone(&self.inner), shared))
    }
}

/// The methods every session type shares.
macro_rules! session_common {
    ($ty:ty) => {
        impl $ty {
            /// The negotiated protocol version (2 or 3).
            pub fn version(&self) -> u8 {
                self.inner.version()
            }

            /// Who the peer is: over a unix socket its process id, user id and group id at
            /// connect time (`SO_PEERCRED`, which the server also checks against
            /// `Config::same_user_only`); over TCP its address.
            ///
            /// ```no_run
            /// # fn demo(session: &shmlink::Session) {
            /// if let shmlink::Peer::Unix { pid, uid, .. } = session.peer() {
            ///     println!("serving pid {pid} of uid {uid}");
            /// }
            /// # }
            /// ```
            pub fn peer(&self) -> crate::Peer {
                self.inner.peer.clone()
            }

            /// Whether the session has closed. Takes in what the peer sent meanwhile (a
            /// close, a protocol violation) without waiting; an idle session also learns of
            /// it within [`Config::idle_drain_interval`](crate::Config) by itself.
            pub fn is_closed(&self) -> bool {
                self.inner.pump_now();
                self.inner.is_closed()
            }

            /// Why the session closed, once it has: the error every operation now returns.
            pub fn close_reason(&self) -> Option<Error> {
                self.inner
                    .lock_state()
                    .close_reason
                    .as_ref()
                    .map(crate::error::CloseReason::error)
            }

            /// Whether the circuit breaker is closed (no fallback in the last
            /// `circuit_breaker`).
            pub fn is_healthy(&self) -> bool {
                self.inner.is_healthy()
            }

            /// Go's metrics for this session (PROTOCOL.md 8).
            pub fn metrics(&self) -> crate::Metrics {
                self.inner.metrics()
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

            /// Closes the session: no new streams; once the peer has taken what is queued
            /// for it (stream closes, data), or after [`Config::shutdown_timeout`](crate::Config),
            /// the socket closes and every stream sees the end. Dropping the session does the
            /// same. A blocking session waits here; an async one waits on a short-lived thread
            /// (use `AsyncSession::shutdown` to await it).
            ///
            /// ```no_run
            /// # fn demo(session: shmlink::Session) -> Result<(), shmlink::Error> {
            /// let mut stream = session.open_stream()?;
            /// stream.send(b"bye")?;
            /// stream.close(); // queued behind the data
            /// session.close(); // the peer reads "bye", then the end of the stream
            /// # Ok(()) }
            /// ```
            pub fn close(&self) {
                self.inner.close_gracefully();
            }
        }

        impl Drop for $ty {
            fn drop(&mut self) {
                self.close();
            }
        }
    };
}
#[cfg(any(feature = "tokio", feature = "smol"))]
pub(crate) use session_common;

session_common!(Session);

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
    require_sealed: bool,
) -> Result<Shm, Error> {
    let queue_name = String::from_utf8_lossy(queue_path).into_owned();
    let buffer_name = String::from_utf8_lossy(buffer_path).into_owned();
    if require_sealed {
        let unsealed = match &fds {
            Some(fds) => fds
                .iter()
                .any(|fd| !SharedRegion::is_sealed_against_shrinking(fd)),
            None => true,
        };
        if unsealed {
            return Err(Error::PeerRefused(format!(
                "the client's shared memory ({mode:?} mode) is not sealed against shrinking, \
                 and Config::require_sealed_memory is set (a peer could truncate it and \
                 crash this process with SIGBUS)"
            )));
        }
    }
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

/// A finished handshake, not yet driven by any runtime.
pub(crate) struct Handshaken {
    conn: Conn,
    shm: Shm,
    side: Side,
    version: u8,
    config: Config,
}

/// Refuses a unix-socket peer of another user unless `Config::same_user_only` is off.
fn check_same_user(conn: &Conn, config: &Config, role: &str) -> Result<(), Error> {
    if !config.same_user_only {
        return Ok(());
    }
    let ours = rustix::process::geteuid().as_raw();
    match conn.peer() {
        Peer::Unix { uid, pid, .. } if uid != ours => Err(Error::PeerRefused(format!(
            "the {role} (pid {pid}) runs as uid {uid}, this process as uid {ours}; \
             Config::same_user_only is set"
        ))),
        _ => Ok(()),
    }
}

/// Runs the client side on an already connected socket: creates and formats the queue and
/// buffer regions, then the handshake (bounded by `initialize_timeout`).
pub(crate) fn client_handshake(conn: Conn, config: Config) -> Result<Handshaken, Error> {
    config.validate()?;
    check_same_user(&conn, &config, "server")?;
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
    Ok(Handshaken {
        conn,
        shm,
        side: Side::Client,
        version,
        config,
    })
}
/// Runs the server side of the handshake on an accepted socket and maps the client's
/// regions. `config` supplies only the timeouts: the client decides the memory layout.
pub(crate) fn server_handshake(conn: Conn, config: Config) -> Result<Handshaken, Error> {
    check_same_user(&conn, &config, "client")?;
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
                    config.require_sealed_memory,
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
    Ok(Handshaken {
        conn,
        shm,
        side: Side::Server,
        version,
        config,
    })
}

impl Handshaken {
    /// Starts the session on `runtime`: the socket becomes non-blocking and is read by
    /// whichever task waits for data.
    pub(crate) fn start(self, runtime: Runtime) -> Result<Arc<Inner>, Error> {
        let Handshaken {
            conn,
            shm,
            side,
            version,
            config,
        } = self;
        conn.set_read_timeout(None)?;
        conn.set_write_timeout(None)?;
        let fd = conn.as_fd().try_clone_to_owned().map_err(Error::Io)?;
        let reactor = runtime.reactor(fd).map_err(Error::Io)?;
        let breaker = config.circuit_breaker.as_millis() as u64;
        let settings = Settings {
            max_frame_len: config.max_frame_len,
            on_exhaustion: config.on_exhaustion,
            write_timeout: config.write_timeout,
            socket_write_timeout: config.connection_write_timeout,
            sync: config.sync,
            spin_window: config.spin_window,
            shutdown_timeout: config.shutdown_timeout,
            blocking: runtime == Runtime::Blocking,
            can_spin: std::thread::available_parallelism().is_ok_and(|n| n.get() > 1),
            monitor: config.monitor.clone().map(|m| (m, config.monitor_interval)),
        };
        let core = core_session::Session::new(side, version, breaker);
        let peer = conn.peer();
        let inner =
            Arc::new_cyclic(|me| Inner::new(me.clone(), shm, conn, reactor, core, settings));
        tracing::info!(
            target: "shmlink::session",
            session = inner.id,
            %peer,
            version,
            client = (side == Side::Client),
            ?runtime,
            "session started"
        );
        if inner.settings.monitor.is_some() {
            crate::monitor::watch(&inner, config.monitor_interval);
        }
        if let Some(timeout) = config.peer_stall_timeout {
            crate::monitor::watch_progress(&inner, timeout);
        }
        if let Some(interval) = config.idle_drain_interval {
            crate::monitor::watch_idle(&inner, interval);
        }
        Ok(inner)
    }
}
