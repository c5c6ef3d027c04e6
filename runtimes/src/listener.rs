//! The server side: listen on a socket and turn each connection into a [`Session`].
//!
//! Handshakes run off the accept path, each on its own short-lived thread bounded by the
//! initialize timeout, so a client that sends garbage, a huge length or a truncated region
//! costs only its own connection (logged with its peer and counted), and a silent client
//! never delays the handshakes of others.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shmlink_linux::socket;

use crate::driver::{Inner, WaitSlot, lock};
use crate::rt::{Runtime, block_on, poll_fn};
use crate::session::{Handshaken, server_handshake};
use crate::stream::StreamShared;
use crate::{Config, Error, Session};

/// How often the acceptor thread looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Handshakes in flight at once; connections beyond this are closed at once (and counted).
const MAX_PENDING_HANDSHAKES: usize = 256;
/// Sessions handshaken but not yet taken by `accept`.
const READY_BACKLOG: usize = 1024;

/// Failed handshakes remembered for [`Listener::recent_failures`].
const RECENT_FAILURES: usize = 16;

#[derive(Debug, Default)]
struct Counters {
    failed: AtomicU64,
    pending: AtomicUsize,
    recent: Mutex<std::collections::VecDeque<HandshakeFailure>>,
}

impl Counters {
    fn failed(&self, peer: &socket::Peer, error: String) {
        // SYNC: a statistic; read by failed_handshakes (Relaxed), orders nothing.
        self.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(target: "shmlink::listener", %peer, %error, "handshake failed");
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_FAILURES {
            recent.pop_front();
        }
        recent.push_back(HandshakeFailure {
            peer: peer.to_string(),
            error,
        });
    }
}

/// A connection whose handshake failed: who it was and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// The peer: pid and uid for a unix socket, the address for TCP.
    pub peer: String,
    /// The error, as text.
    pub error: String,
}

/// A listening shmipc server.
///
/// A background thread accepts connections and runs each handshake on a thread of its own;
/// [`accept`](Self::accept) hands out the sessions whose handshake succeeded. A connection
/// whose handshake fails is logged (target `shmlink::listener`, with the peer's pid and uid
/// or address) and counted in [`failed_handshakes`](Self::failed_handshakes); it never
/// reaches `accept`, so the natural `accept()?` loop survives hostile clients.
///
/// The unix socket file is removed when the listener is dropped.
///
/// ```no_run
/// use shmlink::{Config, Listener};
///
/// let listener = Listener::bind("/tmp/echo.sock", Config::default())?;
/// loop {
///     let session = listener.accept()?; // only sessions that completed their handshake
///     std::thread::spawn(move || {
///         while let Ok(stream) = session.accept_stream(None) {
///             // serve `stream`
/// #           drop(stream);
///         }
///     });
/// }
/// # Ok::<(), shmlink::Error>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    ready: Arc<Ready>,
    /// Sessions owned by the listener, for `accept_stream`.
    hub: Mutex<Hub>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
    tcp_addr: Option<std::net::SocketAddr>,
    /// How long the listener's own sessions get to finish their streams on `close`.
    grace: Duration,
}

impl Listener {
    /// Listens on a unix socket path (a stale socket file there is replaced, as Go does).
    pub fn bind(path: impl AsRef<Path>, config: Config) -> Result<Self, Error> {
        let mode = config.socket_mode;
        Self::start(
            socket::Listener::bind_unix_mode(path.as_ref(), mode)?,
            config,
        )
    }

    /// Serves on a unix socket that already listens: inherited from a parent, handed over by
    /// systemd's socket activation, or shared by several worker processes (each accepts
    /// whichever connections it wins). Its file is not removed on close.
    ///
    /// The socket is made non-blocking, and that flag belongs to the open socket, not to this
    /// process: another process that shares it and accepts with a blocking `accept` gets
    /// `EAGAIN` instead of waiting (shmlink's own listeners poll first).
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), shmlink::Error> {
    /// let socket = std::os::unix::net::UnixListener::bind("/tmp/svc.sock")?;
    /// let listener = shmlink::Listener::from_std(socket, shmlink::Config::default())?;
    /// # Ok(()) }
    /// ```
    pub fn from_std(
        socket: std::os::unix::net::UnixListener,
        config: Config,
    ) -> Result<Self, Error> {
        Self::start(socket::Listener::adopt_unix(socket)?, config)
    }

    /// Listens on a TCP address (clients must use file mode).
    pub fn bind_tcp(addr: impl std::net::ToSocketAddrs, config: Config) -> Result<Self, Error> {
        Self::start(socket::Listener::bind_tcp(addr)?, config)
    }

    fn start(inner: socket::Listener, config: Config) -> Result<Self, Error> {
        let tcp_addr = inner.local_tcp_addr();
        let grace = config.shutdown_timeout;
        let ready = Arc::new(Ready::default());
        let tx = Arc::clone(&ready);
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("shmlink-acceptor".into())
                .spawn(move || accept_loop(&inner, &config, &tx, &counters, &stop))
                .map_err(Error::Io)?
        };
        Ok(Self {
            ready,
            hub: Mutex::new(Hub::default()),
            counters,
            stop,
            acceptor: Mutex::new(Some(acceptor)),
            tcp_addr,
            grace,
        })
    }

    /// The bound TCP address, for TCP listeners.
    pub fn local_tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp_addr
    }

    /// Connections whose handshake failed (or that were refused because too many handshakes
    /// were in flight) since the listener started.
    pub fn failed_handshakes(&self) -> u64 {
        // SYNC: a statistic, pairs with the Relaxed increments in Counters::failed.
        self.counters.failed.load(Ordering::Relaxed)
    }

    /// The last few failed handshakes (at most 16), oldest first.
    pub fn recent_failures(&self) -> Vec<HandshakeFailure> {
        let recent = self
            .counters
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        recent.iter().cloned().collect()
    }

    /// Waits for the next session whose handshake completed.
    pub fn accept(&self) -> Result<Session, Error> {
        loop {
            match self.accept_timeout(STOP_POLL) {
                Err(Error::Timeout) => {}
                other => return other,
            }
        }
    }

    /// Like [`accept`](Self::accept), but gives up with [`Error::Timeout`] if no session is
    /// ready within `timeout`.
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Session, Error> {
        let deadline = Instant::now() + timeout;
        let mut state = self.ready.lock();
        loop {
            if let Some(hs) = state.sessions.pop_front() {
                drop(state);
                return Ok(Session {
                    inner: hs.start(Runtime::Blocking)?,
                });
            }
            if state.closed {
                return Err(Error::ClosedLocally);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout);
            }
            state = self
                .ready
                .cv
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The next finished handshake, for the async accepts.
    #[cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]
    pub(crate) fn poll_handshaken(&self, cx: &mut Context<'_>) -> Poll<Result<Handshaken, Error>> {
        let mut state = self.ready.lock();
        if let Some(hs) = state.sessions.pop_front() {
            return Poll::Ready(Ok(hs));
        }
        if state.closed {
            return Poll::Ready(Err(Error::ClosedLocally));
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Sessions whose handshake finished, waiting for `accept`.
#[derive(Default)]
struct Ready {
    state: Mutex<ReadyState>,
    cv: Condvar,
}

#[derive(Default)]
struct ReadyState {
    sessions: VecDeque<Handshaken>,
    wakers: Vec<Waker>,
    closed: bool,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready").finish_non_exhaustive()
    }
}

impl Ready {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReadyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a session; false when the backlog is full or the listener closed.
    fn push(&self, hs: Handshaken) -> bool {
        let mut state = self.lock();
        if state.closed || state.sessions.len() >= READY_BACKLOG {
            return false;
        }
        state.sessions.push_back(hs);
        for w in state.wakers.drain(..) {
            w.wake();
        }
        drop(state);
        self.cv.notify_one();
        true
    }

    /// Closes the queue; sessions handshaken but not taken are closed (their clients see
    /// the connection end, not silence).
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let unclaimed = std::mem::take(&mut state.sessions);
        for w in state.wakers.drain(..) {
            w.wake();
        }
        drop(state);
        self.cv.notify_all();
        drop(unclaimed);
    }
}

/// Sessions the listener runs itself, so that [`Listener::accept_stream`] can hand out the
/// streams of all of them.
#[derive(Default)]
struct Hub {
    /// The runtime the hub's sessions were started on (the first `accept_stream` decides).
    runtime: Option<Runtime>,
    sessions: Vec<Arc<Inner>>,
    /// Where the next poll starts, so that one busy session cannot starve the others.
    turn: usize,
    /// The listener closed: a session whose handshake finishes now is closed, not served.
    closed: bool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

/// A stream a client opened, and its session.
pub(crate) type Accepted = (Arc<Inner>, Arc<StreamShared>);

/// One `accept_stream` call's waits, one per hub session; forgotten however the call ends.
pub(crate) struct HubWait<'a> {
    listener: &'a Listener,
    runtime: Runtime,
    slots: Vec<(Arc<Inner>, WaitSlot)>,
}

impl HubWait<'_> {
    /// The next stream any hub session's peer opened, with its session.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Accepted, Error>> {
        let listener = self.listener;
        // Sessions whose handshake finished join the hub.
        let closed = loop {
            match listener.poll_handshaken(cx) {
                Poll::Ready(Ok(hs)) => match hs.start(self.runtime) {
                    Ok(inner) => {
                        let mut hub = lock(&listener.hub);
                        if hub.closed {
                            drop(hub);
                            inner.close_gracefully();
                        } else {
                            hub.sessions.push(inner);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(target: "shmlink::listener", error = %e, "cannot start a session");
                    }
                },
                Poll::Ready(Err(_)) => break true,
                Poll::Pending => break false,
            }
        };
        if closed {
            return Poll::Ready(Err(Error::ClosedLocally));
        }
        let (sessions, turn) = {
            let mut hub = lock(&listener.hub);
            hub.sessions.retain(|s| !s.is_closed());
            hub.turn = hub.turn.wrapping_add(1);
            (hub.sessions.clone(), hub.turn)
        };
        self.slots.retain_mut(|(inner, slot)| {
            let keep = sessions.iter().any(|s| Arc::ptr_eq(s, inner));
            if !keep {
                inner.forget(slot);
            }
            keep
        });
        let n = sessions.len();
        for k in 0..n {
            let inner = &sessions[(turn + k) % n];
            let at = match self.slots.iter().position(|(s, _)| Arc::ptr_eq(s, inner)) {
                Some(at) => at,
                None => {
                    self.slots.push((Arc::clone(inner), WaitSlot::acceptor()));
                    self.slots.len() - 1
                }
            };
            let slot = &mut self.slots[at].1;
            match inner.poll_accept(cx, slot, None) {
                Poll::Ready(Ok(shared)) => return Poll::Ready(Ok((Arc::clone(inner), shared))),
                // That session ended; the others go on.
                Poll::Ready(Err(_)) => {}
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}

impl Drop for HubWait<'_> {
    fn drop(&mut self) {
        for (inner, slot) in &mut self.slots {
            inner.forget(slot);
        }
    }
}

impl Listener {
    /// The hub's waits for one `accept_stream` on `runtime`.
    pub(crate) fn hub_wait(&self, runtime: Runtime) -> Result<HubWait<'_>, Error> {
        let mut hub = lock(&self.hub);
        match hub.runtime {
            Some(r) if r != runtime => {
                return Err(Error::Config(format!(
                    "this listener's accept_stream already runs on {r:?}, not {runtime:?}"
                )));
            }
            _ => hub.runtime = Some(runtime),
        }
        Ok(HubWait {
            listener: self,
            runtime,
            slots: Vec::new(),
        })
    }

    /// Waits for the next stream any client opens, across all sessions: the listener takes
    /// the sessions (use this or [`accept`](Self::accept), not both) and hands out their
    /// streams as they come, no session starving the others. [`Error::ClosedLocally`] once
    /// the listener is closed.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), shmlink::Error> {
    /// use std::io::{Read, Write};
    /// let listener = shmlink::Listener::bind("/tmp/echo.sock", shmlink::Config::default())?;
    /// loop {
    ///     let mut stream = listener.accept_stream()?;
    ///     std::thread::spawn(move || {
    ///         let mut buf = [0u8; 4096];
    ///         while let Ok(n @ 1..) = stream.read(&mut buf) {
    ///             if stream.write_all(&buf[..n]).is_err() {
    ///                 break;
    ///             }
    ///         }
    ///     });
    /// }
    /// # }
    /// ```
    pub fn accept_stream(&self) -> Result<crate::Stream, Error> {
        let mut wait = self.hub_wait(Runtime::Blocking)?;
        let (inner, shared) = block_on(poll_fn(|cx| wait.poll(cx)))?;
        Ok(crate::Stream::new(inner, shared))
    }

    /// Runs `handler` on every stream any client opens, each on a thread of its own, until
    /// the listener is closed (from another thread, with [`close`](Self::close) or
    /// [`shutdown`](Self::shutdown)); then returns `Ok(())`.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), shmlink::Error> {
    /// use std::io::{Read, Write};
    /// let listener = shmlink::Listener::bind("/tmp/echo.sock", shmlink::Config::default())?;
    /// listener.serve(|mut stream| {
    ///     let mut buf = [0u8; 4096];
    ///     while let Ok(n) = stream.read(&mut buf) {
    ///         if n == 0 || stream.write_all(&buf[..n]).is_err() {
    ///             break;
    ///         }
    ///     }
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn serve<F>(&self, handler: F) -> Result<(), Error>
    where
        F: Fn(crate::Stream) + Send + Sync + 'static,
    {
        let handler = Arc::new(handler);
        loop {
            let stream = match self.accept_stream() {
                Ok(stream) => stream,
                Err(Error::ClosedLocally) => return Ok(()),
                Err(e) => return Err(e),
            };
            let handler = Arc::clone(&handler);
            let spawned = std::thread::Builder::new()
                .name("shmlink-stream".into())
                .spawn(move || handler(stream));
            if let Err(e) = spawned {
                // The stream is dropped (closed): its client sees the end, not silence.
                tracing::warn!(target: "shmlink::listener", error = %e, "cannot start a stream thread");
            }
        }
    }

    /// Shuts the server down gracefully and waits for it: stops accepting (as
    /// [`close`](Self::close)), then lets the sessions the listener runs (those of
    /// [`accept_stream`](Self::accept_stream) and `serve`) finish the streams already handed
    /// out, up to `timeout`, and closes them once their clients took every reply (up to
    /// [`Config::shutdown_timeout`] more). Streams a client opened but nobody accepted fail on
    /// the client with a closed-session error, never silence.
    ///
    /// A handler that keeps its stream for the next request (a pooled client's stream) holds
    /// the shutdown for the whole `timeout`: requests that come meanwhile are still served.
    ///
    /// ```no_run
    /// # fn demo(listener: std::sync::Arc<shmlink::Listener>) {
    /// // on SIGTERM, from another thread than the one in `serve`:
    /// listener.shutdown(std::time::Duration::from_secs(5));
    /// # }
    /// ```
    pub fn shutdown(&self, timeout: Duration) {
        self.stop_accepting();
        drain_and_close(self.take_hub(), timeout);
    }

    /// The hub's sessions, taken for closing; sessions that finish their handshake later
    /// are closed at once.
    fn take_hub(&self) -> Vec<Arc<Inner>> {
        let mut hub = lock(&self.hub);
        hub.closed = true;
        std::mem::take(&mut hub.sessions)
    }

    fn stop_accepting(&self) {
        // SYNC: Release; pairs with the acceptor loop's Acquire load of the stop flag.
        self.stop.store(true, Ordering::Release);
        let acceptor = self
            .acceptor
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(acceptor) = acceptor {
            // The acceptor owns the socket: it is closed (and its file removed) when it ends.
            let _ = acceptor.join();
        }
        self.ready.close();
    }

    /// Stops accepting: the socket file is removed, handshakes still in flight are
    /// abandoned and sessions handshaken but not accepted are closed; `accept` and
    /// `accept_stream` return [`Error::ClosedLocally`]. Sessions handed out by `accept` are
    /// not touched. The sessions the listener runs itself (for `accept_stream` and `serve`)
    /// shut down as with [`shutdown`](Self::shutdown) with [`Config::shutdown_timeout`] as the
    /// grace, on a thread of their own (this returns at once). Dropping the listener does the
    /// same.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), shmlink::Error> {
    /// let listener = shmlink::Listener::bind("/tmp/svc.sock", shmlink::Config::default())?;
    /// let session = listener.accept()?;
    /// listener.close(); // no new clients; `session` keeps working
    /// # Ok(()) }
    /// ```
    pub fn close(&self) {
        self.stop_accepting();
        let sessions = self.take_hub();
        if sessions.is_empty() {
            return;
        }
        let grace = self.grace;
        let shared = Arc::new(Mutex::new(Some(sessions)));
        let in_thread = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("shmlink-shutdown".into())
            .spawn(move || {
                if let Some(sessions) = lock(&in_thread).take() {
                    drain_and_close(sessions, grace);
                }
            });
        if spawned.is_err() {
            if let Some(sessions) = lock(&shared).take() {
                drain_and_close(sessions, grace);
            }
        }
    }
}

/// Refuses new local streams on `sessions`, waits (up to `timeout`) until no stream handed
/// out is still open, then closes them gracefully, in parallel.
fn drain_and_close(sessions: Vec<Arc<Inner>>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for s in &sessions {
        s.begin_closing();
    }
    let mut pause = Duration::from_micros(100);
    while Instant::now() < deadline && sessions.iter().any(|s| s.streams_in_use() > 0) {
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    std::thread::scope(|scope| {
        for s in &sessions {
            let spawned = std::thread::Builder::new()
                .name("shmlink-close".into())
                .spawn_scoped(scope, move || s.close_gracefully());
            if spawned.is_err() {
                s.close_gracefully();
            }
        }
    });
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.close();
    }
}

/// A handshake slot, given back on drop.
struct Pending<'a>(&'a Counters);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // SYNC: AcqRel on the in-flight count; pairs with the acceptor's fetch_add.
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(
    listener: &socket::Listener,
    config: &Config,
    ready: &Arc<Ready>,
    counters: &Arc<Counters>,
    stop: &AtomicBool,
) {
    // SYNC: Acquire; pairs with the Release store in Listener::drop.
    while !stop.load(Ordering::Acquire) {
        let conn = match listener.accept_timeout(STOP_POLL) {
            Ok(conn) => conn,
            Err(e) if e.is_timeout() => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning; the listener survives.
                tracing::warn!(target: "shmlink::listener", error = %e, "accept failed");
                std::thread::sleep(STOP_POLL);
                continue;
            }
        };
        let peer = conn.peer();
        // SYNC: AcqRel; pairs with the fetch_sub of finished handshakes (Pending::drop).
        if counters.pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_HANDSHAKES {
            // SYNC: AcqRel; undoes the fetch_add above, pairs with it.
            counters.pending.fetch_sub(1, Ordering::AcqRel);
            counters.failed(
                &peer,
                "too many handshakes in flight; connection closed".into(),
            );
            continue;
        }
        let (config, ready, shared) = (config.clone(), Arc::clone(ready), Arc::clone(counters));
        let spawned = std::thread::Builder::new()
            .name("shmlink-handshake".into())
            .spawn(move || {
                // Gives the slot back however this thread ends, a panic included.
                let _slot = Pending(&shared);
                match server_handshake(conn, config) {
                    Ok(hs) => {
                        // Nobody is accepting: drop the session (closing it) rather than hold
                        // it and its mappings.
                        if !ready.push(hs) {
                            shared.failed(
                                &peer,
                                "the ready backlog is full (the application is not accepting)"
                                    .into(),
                            );
                        }
                    }
                    Err(error) => shared.failed(&peer, error.to_string()),
                }
            });
        if let Err(e) = spawned {
            // SYNC: AcqRel; undoes the fetch_add above, pairs with it.
            counters.pending.fetch_sub(1, Ordering::AcqRel);
            counters.failed(
                &socket::Peer::Unknown,
                format!("cannot start a handshake thread: {e}"),
            );
        }
    }
}
